package probe

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// open creates a socket for talking to dst through s and hands it to Go's
// poller.
func open(s Sockets, dst netip.Addr, typ, proto int) (*os.File, syscall.RawConn, error) {
	domain := unix.AF_INET6
	if dst.Is4() {
		domain = unix.AF_INET
	}
	fd, err := s.Socket(domain, typ, proto)
	if err != nil {
		return nil, nil, err
	}
	// Sockets makes it non-blocking, so os.NewFile registers it with the
	// poller: without that neither a deadline nor Close would interrupt a
	// blocked call.
	f := os.NewFile(uintptr(fd), "probe")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, rc, nil
}

// deadliner is a socket, as an *os.File or a net.Conn.
type deadliner interface {
	SetDeadline(time.Time) error
	Close() error
}

// tie gives c the deadline of ctx and closes c when ctx is cancelled, so
// that a blocked connect, read or write returns at once. It returns false
// from stop when c has been or is being closed.
func tie(ctx context.Context, c deadliner) (stop func() bool) {
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	return context.AfterFunc(ctx, func() { c.Close() })
}

// sockaddr is dst for the socket fd.
func sockaddr(fd int, dst netip.AddrPort) (unix.Sockaddr, error) {
	a := dst.Addr()
	if a.Is4() {
		return &unix.SockaddrInet4{Port: int(dst.Port()), Addr: a.As4()}, nil
	}
	sa := &unix.SockaddrInet6{Port: int(dst.Port()), Addr: a.As16()}
	if zone := a.Zone(); zone != "" {
		if n, err := strconv.ParseUint(zone, 10, 32); err == nil {
			sa.ZoneId = uint32(n)
			return sa, nil
		}
		// Resolve the name through the socket: net.InterfaceByName would look
		// in the netns of the calling thread, not in the pod's.
		ifr, err := unix.NewIfreq(zone)
		if err == nil {
			err = unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr)
		}
		if err != nil {
			return nil, fmt.Errorf("interface %q: %w", zone, err)
		}
		sa.ZoneId = ifr.Uint32()
	}
	return sa, nil
}

// addrOf is the address in sa, or the zero Addr.
func addrOf(sa unix.Sockaddr) netip.Addr {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(sa.Addr)
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(sa.Addr)
	}
	return netip.Addr{}
}

// sendto sends b to sa (nil on a connected socket), waiting for room in the
// send buffer.
func sendto(rc syscall.RawConn, b []byte, sa unix.Sockaddr) error {
	var err error
	if rerr := rc.Write(func(fd uintptr) bool {
		err = ignoringEINTR(func() error { return unix.Sendto(int(fd), b, 0, sa) })
		return err != unix.EAGAIN
	}); rerr != nil {
		return rerr
	}
	return err
}

// recvfrom reads one datagram into b.
func recvfrom(rc syscall.RawConn, b []byte) (n int, from unix.Sockaddr, err error) {
	if rerr := rc.Read(func(fd uintptr) bool {
		err = ignoringEINTR(func() error {
			var err error
			n, from, err = unix.Recvfrom(int(fd), b, 0)
			return err
		})
		return err != unix.EAGAIN
	}); rerr != nil {
		return 0, nil, rerr
	}
	return n, from, err
}

// ignoringEINTR retries call when a signal interrupts it: waiting for
// readiness again instead could wait for an edge that has already passed.
func ignoringEINTR(call func() error) error {
	for {
		if err := call(); err != unix.EINTR {
			return err
		}
	}
}
