package probe

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"syscall"

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
	f, err := dialTCP(ctx, p.socks, p.dst, &p.recvErr)
	if err != nil {
		if p.refusedOK && errors.Is(err, syscall.ECONNREFUSED) {
			return nil
		}
		return err
	}
	f.Close()
	return nil
}

// dialTCP connects a fresh TCP socket, created through s, to dst. re
// learns from a failed connect, and names the ICMP error behind the next.
func dialTCP(ctx context.Context, s Sockets, dst netip.AddrPort, re *recvErr) (*os.File, error) {
	f, rc, err := open(s, dst.Addr(), unix.SOCK_STREAM, unix.IPPROTO_TCP)
	if err != nil {
		return nil, err
	}
	stop := tie(ctx, f)
	err = connect(rc, dst, re)
	re.arm(err)
	if !stop() && err == nil {
		err = ctxErr(ctx) // connected just as ctx ended: f is closed
	}
	if err != nil {
		f.Close()
		return nil, ioErr(ctx, err)
	}
	return f, nil
}

// connect is a non-blocking connect(2) that waits for the handshake through
// the poller.
// A connect that an ICMP error refused returns an *ICMPError when re is
// armed.
func connect(rc syscall.RawConn, dst netip.AddrPort, re *recvErr) error {
	var err error
	if cerr := rc.Control(func(fd uintptr) {
		// A zero linger makes close send a RST and free the socket at once:
		// at a few attempts a second, closing with a FIN would pile sockets up
		// in FIN_WAIT and TIME_WAIT in the pod netns.
		err = unix.SetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		if err != nil {
			return
		}
		if err = re.set(int(fd), dst.Addr().Is6()); err != nil {
			return
		}
		var sa unix.Sockaddr
		if sa, err = sockaddr(int(fd), dst); err != nil {
			return
		}
		err = unix.Connect(int(fd), sa)
	}); cerr != nil {
		return cerr
	}
	switch err {
	case nil, unix.EISCONN:
		return nil
	case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
	default:
		return err
	}
	if werr := rc.Write(func(fd uintptr) bool {
		var v int
		if v, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); err != nil {
			return true
		}
		switch errno := unix.Errno(v); errno {
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			return false
		case 0, unix.EISCONN:
			// The poller can wake up spuriously (golang.org/issue/14548):
			// only a peer name proves the handshake is done.
			_, perr := unix.Getpeername(int(fd))
			return perr == nil
		default:
			err = errno
			if re.on.Load() {
				err = icmpCause(int(fd), unix.IPPROTO_TCP, dst.Addr(), errno)
			}
			return true
		}
	}); werr != nil {
		return werr
	}
	return err
}
