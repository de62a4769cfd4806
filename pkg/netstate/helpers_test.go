package netstate

import (
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

func withNetNS(t *testing.T, name string, fn func() error) error {
	t.Helper()
	return ns.WithNetNSPath("/var/run/netns/"+name, func(ns.NetNS) error { return fn() })
}

// sockets makes sockets in the named netns (what podns.NetNS does in the
// product, which this package cannot import).
type sockets struct {
	t    *testing.T
	name string
}

func (s sockets) Socket(domain, typ, proto int) (fd int, err error) {
	err = withNetNS(s.t, s.name, func() error {
		fd, err = unix.Socket(domain, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
		return err
	})
	return fd, err
}
