package probe

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// NetNS is the Sockets of a network namespace, named by a path such as
// /var/run/netns/NAME or /proc/PID/ns/net. It is safe for concurrent use.
type NetNS struct {
	mu sync.RWMutex // held to read ns while a socket is made, to write it on Close
	ns ns.NetNS     // nil once closed
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
	// GetNS accepts any file on procfs or nsfs: ask the kernel (4.11 or later)
	// what it is.
	if t, err := unix.IoctlRetInt(int(h.Fd()), unix.NS_GET_NSTYPE); err != nil || t != unix.CLONE_NEWNET {
		h.Close()
		return nil, &terseError{fmt.Sprintf("netns %s is not a network namespace", path), ns.NSPathNotNSErr{}}
	}
	return &NetNS{ns: h}, nil
}

// Socket creates a socket inside the namespace: a locked OS thread enters the
// namespace for the socket(2) call alone.
func (n *NetNS) Socket(domain, typ, proto int) (int, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.ns == nil {
		return -1, fmt.Errorf("socket: %w", net.ErrClosed)
	}
	fd := -1
	err := n.ns.Do(func(ns.NetNS) error {
		var err error
		fd, err = unix.Socket(domain, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
		return os.NewSyscallError("socket", err)
	})
	return fd, err
}

// Close releases the namespace. Sockets already made keep working.
func (n *NetNS) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ns == nil {
		return nil
	}
	err := n.ns.Close()
	n.ns = nil
	return err
}
