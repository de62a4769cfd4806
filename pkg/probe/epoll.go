package probe

import (
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A TCP probe's attempt is watched in an epoll set of netready's own, and
// every call it makes on its socket is a raw syscall. A waiting ADD makes
// about 25 attempts a second, most of which are never answered, and on a
// small VM what an attempt costs is mostly the process waking up, not the
// syscalls. Go's poller and its ordinary syscall wrappers add wake-ups: a
// socket handed to the poller is registered and deregistered with it, its
// close goes through the ordinary wrapper, and every ordinary wrapper
// (entersyscall) wakes the runtime's sysmon thread, which then polls every
// 20 µs until the process is idle again, and takes the P away from a
// syscall that runs longer than that, handing it to another thread. strace
// of one waiting ADD counted ~20 syscalls an attempt, 3 of them sysmon's
// nanosleeps and 2 futex hand-offs. A raw syscall wakes nobody. The set
// itself is one file in Go's poller (an epoll fd is pollable), read by one
// goroutine that hands each ready socket to its attempt.
//
// Only TCP attempts go this way: a connect is all they do, and it never
// blocks. The other probes read and write through the poller.

// watchSet is a process's epoll set for attempt sockets. It exists while
// an attempt is watched, and is closed when the last one leaves.
var watchSet struct {
	sync.Mutex
	set   *epollSet
	users int
}

// epollSet is an epoll instance and the goroutine that reads it.
type epollSet struct {
	epfd int
	f    *os.File // epfd in Go's poller
	rc   syscall.RawConn
	done chan struct{} // closed when run has returned

	mu      sync.Mutex
	waiting map[int32]func() // by socket: called when it is ready
}

// watch adds fd to the process's set, for writability, once: ready is
// called, on the set's goroutine, when fd is writable or has an error. It
// must not block (nor call the set). rearm asks for the next time (after a
// spurious wake-up), and unwatch must be called before fd is closed.
func watch(fd int, ready func()) (s *epollSet, err error) {
	watchSet.Lock()
	defer watchSet.Unlock()
	if watchSet.set == nil {
		if watchSet.set, err = newEpollSet(); err != nil {
			return nil, err
		}
	}
	s = watchSet.set
	s.mu.Lock()
	s.waiting[int32(fd)] = ready
	s.mu.Unlock()
	err = s.ctl(unix.EPOLL_CTL_ADD, fd)
	if err == unix.EEXIST {
		// A recycled socket (tcpProber.recycle) is still in the set, its
		// one-shot spent or not: arm it again.
		err = s.ctl(unix.EPOLL_CTL_MOD, fd)
	}
	if err != nil {
		s.mu.Lock()
		delete(s.waiting, int32(fd))
		s.mu.Unlock()
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	watchSet.users++
	return s, nil
}

// rearm watches fd for its next readiness.
func (s *epollSet) rearm(fd int) error {
	if err := s.ctl(unix.EPOLL_CTL_MOD, fd); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// unwatch stops telling fd's attempt about it: once it has returned, its
// ready is not called again. The caller then closes fd, which takes it out
// of the epoll set, or keeps it for another attempt (tcpProber.recycle),
// whose watch arms it again; an event for it that run read already finds
// no one to tell. The last to leave closes the set.
func (s *epollSet) unwatch(fd int) {
	s.mu.Lock()
	delete(s.waiting, int32(fd))
	s.mu.Unlock()
	watchSet.Lock()
	watchSet.users--
	last := watchSet.users == 0
	if last {
		watchSet.set = nil
	}
	watchSet.Unlock()
	if last {
		// Closing the file wakes run, whose read returns; the descriptor is
		// closed once it has.
		s.f.Close()
		<-s.done
	}
}

func (s *epollSet) ctl(op, fd int) error {
	ev := unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLONESHOT, Fd: int32(fd)}
	_, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(s.epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

func newEpollSet() (*epollSet, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	// Non-blocking, so that os.NewFile hands it to the poller. Raw: a
	// follower makes a set for each of its rare attempts, the one an answer
	// wakes it for included, and unix.SetNonblock's wrapper would wake
	// sysmon then (above).
	if _, _, errno := unix.RawSyscall(unix.SYS_FCNTL, uintptr(epfd), unix.F_SETFL, unix.O_NONBLOCK); errno != 0 {
		unix.Close(epfd)
		return nil, os.NewSyscallError("fcntl", errno)
	}
	f := os.NewFile(uintptr(epfd), "epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	s := &epollSet{epfd: epfd, f: f, rc: rc, done: make(chan struct{}), waiting: make(map[int32]func())}
	go s.run()
	return s, nil
}

// run hands each ready socket to its attempt until the set is closed.
func (s *epollSet) run() {
	defer close(s.done)
	var events [16]unix.EpollEvent
	// The poller reports the set readable (edge-triggered) when a socket in
	// it becomes ready; each call takes what is ready now, without waiting,
	// and returns false to wait for the next edge. Read returns only when
	// the set is closed.
	s.rc.Read(func(fd uintptr) bool {
		for {
			n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, fd, uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
			if errno == unix.EINTR {
				continue
			}
			if errno != 0 || n == 0 {
				return false
			}
			// Called under mu, so that unwatch returns only once a ready
			// of its socket is over.
			s.mu.Lock()
			for _, ev := range events[:n] {
				if ready := s.waiting[ev.Fd]; ready != nil {
					ready()
				}
			}
			s.mu.Unlock()
			if int(n) < len(events) {
				return false
			}
		}
	})
}
