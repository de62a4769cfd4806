// Package podns opens a pod's network namespace once and offers what
// netready does there: sockets made inside it, a netlink view of its links,
// addresses and routes, a watcher of their changes, and notice of its
// removal.
package podns

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netready/netready/pkg/netstate"
)

// NetNS is a pod's network namespace, named by a path such as
// /var/run/netns/NAME or /proc/PID/ns/net. It is safe for concurrent use.
//
// One OS thread enters the namespace when it is opened and makes every
// socket there: a socket is then one syscall on that thread, with no setns
// in and out per attempt (which cost more than the attempt itself).
type NetNS struct {
	path string
	id   fileID          // the namespace opened, to tell when path names it no more
	view *netstate.NetNS // netlink, its socket made inside the namespace

	mu   sync.RWMutex   // read-held while a request is sent, write-held by Close
	reqs chan socketReq // nil once closed
	done chan struct{}  // closed when the thread's goroutine has returned
}

type socketReq struct {
	domain, typ, proto int
	reply              chan socketReply
}

type socketReply struct {
	fd  int
	err error
}

// fileID is what tells one namespace file from another.
type fileID struct{ dev, ino uint64 }

// IsBadNetNS reports whether err says the path is no usable network
// namespace (missing, or not a netns): the runtime's doing, not netready's.
func IsBadNetNS(err error) bool {
	var notExist ns.NSPathNotExistErr
	var notNS ns.NSPathNotNSErr
	return errors.As(err, &notExist) || errors.As(err, &notNS)
}

// Open opens the network namespace at path. When path does not exist, or
// is not a network namespace, the error says so, and errors.As finds an
// ns.NSPathNotExistErr or an ns.NSPathNotNSErr in it (IsBadNetNS).
func Open(path string) (*NetNS, error) {
	h, err := ns.GetNS(path)
	if err != nil {
		var notExist ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		switch {
		case errors.As(err, &notExist):
			return nil, &badNetNS{fmt.Sprintf("netns %s does not exist", path), err}
		case errors.As(err, &notNS):
			return nil, &badNetNS{fmt.Sprintf("netns %s is not a network namespace", path), err}
		}
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	// The thread, the netlink socket and the watchers hold the namespace on
	// their own: the file is needed only to enter it.
	defer h.Close()
	fd := int(h.Fd())
	// GetNS accepts any file on procfs or nsfs: ask the kernel (4.11 or later)
	// what it is.
	if t, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE); err != nil || t != unix.CLONE_NEWNET {
		return nil, &badNetNS{fmt.Sprintf("netns %s is not a network namespace", path), ns.NSPathNotNSErr{}}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, os.NewSyscallError("fstat", err))
	}
	view, err := netstate.OpenAt(netns.NsHandle(fd))
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	n := &NetNS{path: path, id: fileID{st.Dev, st.Ino}, view: view, reqs: make(chan socketReq), done: make(chan struct{})}
	entered := make(chan error)
	go n.serve(fd, n.reqs, entered)
	if err := <-entered; err != nil {
		view.Close()
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	return n, nil
}

// badNetNS is a path that names no network namespace, in words an operator
// can act on; it unwraps to ns's typed error.
type badNetNS struct {
	msg string
	err error
}

func (e *badNetNS) Error() string { return e.msg }
func (e *badNetNS) Unwrap() error { return e.err }

// serve runs on a locked OS thread that enters the namespace and never
// leaves it. It is never unlocked: when the goroutine returns, the runtime
// ends the thread instead of reusing it, so no other code runs in the pod's
// netns. It starts no goroutine and makes nothing but sockets. It takes reqs
// as an argument: Close may set n.reqs to nil as soon as entered is sent.
func (n *NetNS) serve(nsfd int, reqs <-chan socketReq, entered chan<- error) {
	defer close(n.done)
	runtime.LockOSThread()
	if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
		entered <- os.NewSyscallError("setns", err)
		return
	}
	entered <- nil
	for req := range reqs {
		fd, err := unix.Socket(req.domain, req.typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, req.proto)
		req.reply <- socketReply{fd, os.NewSyscallError("socket", err)}
	}
}

// Path is the path the namespace was opened at.
func (n *NetNS) Path() string { return n.path }

// Socket creates a socket inside the namespace (probe.Sockets).
func (n *NetNS) Socket(domain, typ, proto int) (int, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.reqs == nil {
		return -1, fmt.Errorf("socket: %w", net.ErrClosed)
	}
	reply := make(chan socketReply, 1)
	n.reqs <- socketReq{domain, typ, proto, reply}
	r := <-reply
	if r.err != nil {
		return -1, r.err
	}
	return r.fd, nil
}

// View is the netlink view of the namespace's links, addresses and routes.
// It is closed with n.
func (n *NetNS) View() *netstate.NetNS { return n.view }

// Watch notifies on changes to links, addresses, routes and neighbours in
// the namespace, as netstate.WatchNetNS does. The caller closes the Watcher.
func (n *NetNS) Watch(notify chan<- struct{}) (*netstate.Watcher, error) {
	return netstate.WatchNetNS(n, notify)
}

// ErrRemoved is the cause when the pod's netns goes away while netready
// waits: the runtime gave up on the sandbox.
var ErrRemoved = errors.New("the pod's netns was removed while netready waited")

// removalCheckEvery is how often the netns path is looked at. Netlink has no
// event for a netns being unmounted (netready's own sockets keep it alive),
// so this is the one check on a timer: a stat once a second. Each timer wakes
// the whole process (its runtime's threads too); at 200 ms it was the most
// frequent wake-up of an ADD that follows another's probing, and a removed
// sandbox is not wanted back sooner.
const removalCheckEvery = time.Second

// WatchGone calls gone with ErrRemoved (wrapped, naming the path) once the
// path no longer names the namespace that was opened: the runtime removed
// the sandbox. stop ends the watch and returns once it has ended.
//
// It is one of the things that end a wait early (gate.Options.Watch's end);
// a new one, such as the pod deleted in the API server, sits beside it.
func (n *NetNS) WatchGone(gone func(cause error)) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(removalCheckEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			if n.Gone() {
				gone(fmt.Errorf("%w (%s)", ErrRemoved, n.path))
				return
			}
		}
	}()
	return func() { close(done); <-finished }
}

// Gone reports whether the path no longer names the namespace that was
// opened. An unmounted bind mount leaves a plain empty file behind until it
// is removed: its inode then differs from the namespace's.
func (n *NetNS) Gone() bool {
	var st unix.Stat_t
	if err := unix.Stat(n.path, &st); err != nil {
		return true
	}
	return (fileID{st.Dev, st.Ino}) != n.id
}

// Close ends the namespace's thread and closes the netlink view. Sockets
// already made keep working.
func (n *NetNS) Close() error {
	n.mu.Lock()
	if n.reqs == nil {
		n.mu.Unlock()
		return nil
	}
	close(n.reqs)
	n.reqs = nil
	n.mu.Unlock()
	<-n.done
	n.view.Close()
	return nil
}
