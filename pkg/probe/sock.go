package probe

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"
	"unsafe"

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
	zone, err := zoneID(fd, a.Zone())
	if err != nil {
		return nil, err
	}
	return &unix.SockaddrInet6{Port: int(dst.Port()), Addr: a.As16(), ZoneId: zone}, nil
}

// zoneID is the index of the interface an IPv6 zone names, a number or a
// name, or 0 for no zone.
func zoneID(fd int, zone string) (uint32, error) {
	if zone == "" {
		return 0, nil
	}
	if n, err := strconv.ParseUint(zone, 10, 32); err == nil {
		return uint32(n), nil
	}
	// Resolve the name through the socket: net.InterfaceByName would look in
	// the netns of the calling thread, not in the pod's.
	ifr, err := unix.NewIfreq(zone)
	if err == nil {
		err = unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr)
	}
	if err != nil {
		return 0, fmt.Errorf("interface %q: %w", zone, err)
	}
	return ifr.Uint32(), nil
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

// The raw syscalls below never block (the sockets are non-blocking), and
// skip the runtime's entersyscall: see epoll.go for why that matters.

// setsockoptRaw is setsockopt(2) as a raw syscall.
func setsockoptRaw(fd, level, opt int, val unsafe.Pointer, n uintptr) error {
	if _, _, errno := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(val), n, 0); errno != 0 {
		return errno
	}
	return nil
}

// rawClose closes a socket that Go's poller never saw.
func rawClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

// rawSockaddr writes dst into raw, as connect(2) on fd takes it, and
// returns its length.
func rawSockaddr(fd int, dst netip.AddrPort, raw *unix.RawSockaddrInet6) (uintptr, error) {
	// Port is in network byte order: its bytes as they are in memory.
	port := binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, dst.Port()))
	if a := dst.Addr(); a.Is4() {
		r4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(raw))
		*r4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Port: port, Addr: a.As4()}
		return unix.SizeofSockaddrInet4, nil
	}
	zone, err := zoneID(fd, dst.Addr().Zone())
	if err != nil {
		return 0, err
	}
	*raw = unix.RawSockaddrInet6{Family: unix.AF_INET6, Port: port, Addr: dst.Addr().As16(), Scope_id: zone}
	return unix.SizeofSockaddrInet6, nil
}
