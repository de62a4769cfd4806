// Package threadns tells which network namespace the calling thread is in
// without looking under /proc/PID/task.
//
// The usual way, netns.Get (and through it cni's ns.CheckNetNS and
// netlink's NewHandleAt), opens /proc/PID/task/TID/ns/net. Each thread
// that does leaves dentries under /proc/PID/task/TID, which the kernel
// invalidates when the process is reaped (release_task →
// proc_invalidate_siblings_dcache); when many processes exit at once their
// reapers contend there. 110 Go processes released at once, each having
// made that lookup from four threads, cost their parent 41-49 ms of CPU to
// reap against 5-9 ms without, and were all reaped at p99 46-48 ms against
// 19-30 (e2e/bench/reapcost, three runs each on this project's 2-core VM,
// kernel 6.18; a lookup of /proc/self/ns/net from the same threads costs
// nothing measurable). A CNI plugin is reaped by the runtime after every
// ADD, and the ADDs a path opening releases are reaped at once.
//
// A socket knows its namespace: SIOCGSKNS on a socket just made gives it.
package threadns

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Open returns an open file of the calling thread's network namespace,
// close-on-exec; the caller closes it. The goroutine must be on the thread
// it asks about: locked to it, or on any thread of a process whose threads
// share one netns.
//
// SIOCGSKNS needs CAP_NET_ADMIN and Linux 4.9; without them it falls back
// to netns.Get and its /proc lookup.
func Open() (int, error) {
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		fd, ierr := unix.IoctlRetInt(s, unix.SIOCGSKNS) // close-on-exec (open_related_ns)
		unix.Close(s)
		if ierr == nil {
			return fd, nil
		}
		err = os.NewSyscallError("ioctl SIOCGSKNS", ierr)
	}
	h, gerr := netns.Get()
	if gerr != nil {
		return -1, fmt.Errorf("the calling thread's netns: %w", errors.Join(err, gerr))
	}
	return int(h), nil
}

// ID is what tells namespaces apart: the device and inode of the thread's
// netns file, as stat(2) of /proc/thread-self/ns/net reports them.
type ID struct{ Dev, Ino uint64 }

// Self is the ID of the calling thread's network namespace (see Open).
func Self() (ID, error) {
	fd, err := Open()
	if err != nil {
		return ID{}, err
	}
	defer unix.Close(fd)
	return fdID(fd)
}

func fdID(fd int) (ID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return ID{}, os.NewSyscallError("fstat", err)
	}
	return ID{st.Dev, st.Ino}, nil
}

// IsSelf reports whether path names the calling thread's network namespace,
// as cni's ns.CheckNetNS does: a path that cannot be opened is not it (the
// plugin checks the path itself).
func IsSelf(path string) (bool, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, nil
	}
	defer unix.Close(fd)
	other, err := fdID(fd)
	if err != nil {
		return false, nil
	}
	self, err := Self()
	if err != nil {
		return false, err
	}
	return other == self, nil
}
