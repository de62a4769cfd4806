package probe

import (
	"context"
	"errors"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tcpProber succeeds when a connection is established.
type tcpProber struct {
	socks     Sockets
	dst       netip.AddrPort
	refusedOK bool // a RST answers too: the host is up, the port shut
	recvErr   recvErr
}

func (p *tcpProber) Attempt(ctx context.Context) error {
	fd, err := dialTCP(ctx, p.socks, p.dst, &p.recvErr)
	if err != nil {
		if p.refusedOK && errors.Is(err, syscall.ECONNREFUSED) {
			return nil
		}
		return err
	}
	rawClose(fd)
	return nil
}

// dialTCP connects a fresh TCP socket, created through s, to dst, and
// returns it. re learns from a failed connect, and names the ICMP error
// behind the next.
func dialTCP(ctx context.Context, s Sockets, dst netip.AddrPort, re *recvErr) (fd int, err error) {
	domain := unix.AF_INET6
	if dst.Addr().Is4() {
		domain = unix.AF_INET
	}
	if fd, err = s.Socket(domain, unix.SOCK_STREAM, unix.IPPROTO_TCP); err != nil {
		return -1, err
	}
	err = connectRaw(ctx, fd, dst, re)
	re.arm(err)
	if err != nil {
		rawClose(fd)
		return -1, ioErr(ctx, err)
	}
	return fd, nil
}

// connectRaw connects fd to dst with raw syscalls only, and waits for the
// handshake in the process's epoll set (see epoll.go). It returns the
// connect's errno, an *ICMPError when re is armed and one refused it, or
// ctx's error when ctx ends first.
func connectRaw(ctx context.Context, fd int, dst netip.AddrPort, re *recvErr) error {
	// A zero linger makes close send a RST and free the socket at once: at
	// a few attempts a second, closing with a FIN would pile sockets up in
	// FIN_WAIT and TIME_WAIT in the pod netns.
	if err := setsockoptRaw(fd, unix.SOL_SOCKET, unix.SO_LINGER, unsafe.Pointer(&unix.Linger{Onoff: 1}), unix.SizeofLinger); err != nil {
		return err
	}
	if err := re.set(fd, dst.Addr().Is6()); err != nil {
		return err
	}
	var raw unix.RawSockaddrInet6 // room for either family
	n, err := rawSockaddr(fd, dst, &raw)
	if err != nil {
		return err
	}
	_, _, errno := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&raw)), n)
	switch errno {
	case 0, unix.EISCONN:
		return nil
	case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
	default:
		return connectErr(fd, dst, errno, re)
	}
	ready, set, err := watch(fd)
	if err != nil {
		return err
	}
	defer set.unwatch(fd)
	for woken := false; ; woken = true {
		// Look before the first wait too: an ICMP error that came back while
		// connect itself held the socket (on a veth the whole path can run
		// inside the syscall) is kept as a soft error, which wakes nobody and
		// which the kernel acts on only at its retransmission, a second
		// later. SO_ERROR returns it.
		if done, err := handshake(fd, dst, re, woken); done {
			return err
		}
		if woken {
			// Told of a predecessor's event (see handshake): ask again.
			if err := set.rearm(fd); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ready:
		}
	}
}

// handshake reports whether the connect on fd is over, and how it ended.
// Before the first wake-up it looks for an error only: a connect that
// completes makes the socket writable, which the epoll set reports even when
// that was before the socket was added.
func handshake(fd int, dst netip.AddrPort, re *recvErr, woken bool) (done bool, err error) {
	v := int32(0)
	vlen := uint32(4)
	if _, _, errno := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_ERROR, uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&vlen)), 0); errno != 0 {
		return true, errno
	}
	switch errno := unix.Errno(v); errno {
	case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
		return false, nil
	case 0, unix.EISCONN:
		if !woken {
			return false, nil
		}
		// A socket number closed and reused can be told of its
		// predecessor's event: only a peer name proves the handshake is
		// done.
		var peer unix.RawSockaddrAny
		plen := uint32(unix.SizeofSockaddrAny)
		_, _, errno := unix.RawSyscall(unix.SYS_GETPEERNAME, uintptr(fd), uintptr(unsafe.Pointer(&peer)), uintptr(unsafe.Pointer(&plen)))
		return errno == 0, nil
	default:
		return true, connectErr(fd, dst, errno, re)
	}
}

// connectErr is errno, or the ICMP error behind it when re is armed.
func connectErr(fd int, dst netip.AddrPort, errno unix.Errno, re *recvErr) error {
	if re.on.Load() {
		return icmpCause(fd, unix.IPPROTO_TCP, dst.Addr(), errno)
	}
	return errno
}
