package probe

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// NetNS is the Sockets of a network namespace, named by a path such as
// /var/run/netns/NAME or /proc/PID/ns/net. It is safe for concurrent use.
//
// One OS thread enters the namespace when it is opened and makes every
// socket there: a socket is then one syscall on that thread, with no setns
// in and out per attempt (which cost more than the attempt itself).
type NetNS struct {
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

// IsBadNetNS reports whether err says the path is no usable network
// namespace (missing, or not a netns): the runtime's doing, not netready's.
func IsBadNetNS(err error) bool {
	var notExist ns.NSPathNotExistErr
	var notNS ns.NSPathNotNSErr
	return errors.As(err, &notExist) || errors.As(err, &notNS)
}

// OpenNetNS opens the network namespace at path. When path does not exist,
// or is not a network namespace, the error says so, and errors.As finds an
// ns.NSPathNotExistErr or an ns.NSPathNotNSErr in it.
func OpenNetNS(path string) (*NetNS, error) {
	h, err := ns.GetNS(path)
	if err != nil {
		var notExist ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		switch {
		case errors.As(err, &notExist):
			return nil, &terseError{fmt.Sprintf("netns %s does not exist", path), err}
		case errors.As(err, &notNS):
			return nil, &terseError{fmt.Sprintf("netns %s is not a network namespace", path), err}
		}
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	// Once the thread is in the namespace it needs the fd no more.
	defer h.Close()
	// GetNS accepts any file on procfs or nsfs: ask the kernel (4.11 or later)
	// what it is.
	if t, err := unix.IoctlRetInt(int(h.Fd()), unix.NS_GET_NSTYPE); err != nil || t != unix.CLONE_NEWNET {
		return nil, &terseError{fmt.Sprintf("netns %s is not a network namespace", path), ns.NSPathNotNSErr{}}
	}
	n := &NetNS{reqs: make(chan socketReq), done: make(chan struct{})}
	entered := make(chan error)
	go n.serve(int(h.Fd()), n.reqs, entered)
	if err := <-entered; err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	return n, nil
}

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

// Socket creates a socket inside the namespace.
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

// Close ends the namespace's thread. Sockets already made keep working.
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
	return nil
}
