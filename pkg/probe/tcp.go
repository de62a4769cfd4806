package probe

import (
	"context"
	"errors"
	"net/netip"
	"sync"
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

	mu    sync.Mutex
	spare []int // sockets of closed attempts, disconnected, for Start to use again
}

// maxSpare bounds the sockets a prober keeps: a waiting gate closes its
// oldest attempt and starts a new one on the same tick, so one is what it
// uses; an answer closes up to MaxInFlight at once.
const maxSpare = 2

func (p *tcpProber) Attempt(ctx context.Context) error {
	fd, err := dialTCP(ctx, p.socks, p.dst, &p.recvErr)
	if err != nil {
		return p.outcome(err)
	}
	rawClose(fd)
	return nil
}

// Start sends one attempt without waiting for it: a Starter. The attempt
// is nil when it ended inside the call, err its outcome; otherwise ready
// is called, on another goroutine and possibly before Start returns, each
// time it may have ended, and the caller asks its Result then.
func (p *tcpProber) Start(ready func()) (*Pending, error) {
	c, connected, err := startConnect(p.socks, p.takeSpare(), p.dst, &p.recvErr, ready)
	switch {
	case err != nil:
		return nil, p.outcome(attemptErr(err))
	case connected:
		p.recycle(c.release())
		return nil, nil
	}
	return &Pending{c: c, p: p}, nil
}

// Close closes the sockets the prober keeps for Start; Start must not be
// called after it.
func (p *tcpProber) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, fd := range p.spare {
		rawClose(fd)
	}
	p.spare = nil
}

// takeSpare is a socket kept by recycle, or -1.
func (p *tcpProber) takeSpare() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.spare)
	if n == 0 {
		return -1
	}
	fd := p.spare[n-1]
	p.spare = p.spare[:n-1]
	return fd
}

// recycle keeps the socket of a closed attempt for the next, or closes it.
// Reusing a socket saves closing it, making another (the netns thread's
// batches) and setting its options: on a small VM about a fifth of what a
// waiting ADD spends. A connect to AF_UNSPEC takes it back to CLOSE and
// out of the kernel's connection table, so nothing meant for the old
// attempt (an answer, an ICMP error) can reach it any more. It leaves
// ECONNRESET as the socket's error, which the next connect clears
// (TestStartRecyclesSockets fails on a kernel that would not). A socket
// with the error queue on is not kept: ICMP errors of the old attempt may
// still be queued there, and would name the wrong cause.
func (p *tcpProber) recycle(fd int) {
	if !p.recvErr.on.Load() {
		var unspec unix.RawSockaddrAny // Family 0: AF_UNSPEC
		_, _, errno := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&unspec)), unix.SizeofSockaddrInet6)
		if errno == 0 {
			p.mu.Lock()
			if len(p.spare) < maxSpare {
				p.spare = append(p.spare, fd)
				fd = -1
			}
			p.mu.Unlock()
		}
	}
	if fd >= 0 {
		rawClose(fd)
	}
}

// outcome is an attempt's error as the prober reports it: a refused
// connection answers when refusedOK.
func (p *tcpProber) outcome(err error) error {
	if p.refusedOK && errors.Is(err, syscall.ECONNREFUSED) {
		return nil
	}
	return err
}

// Pending is a TCP attempt in flight, as Start returned it. It is not safe
// for concurrent use: one goroutine asks its Result and Closes it.
type Pending struct {
	c *tcpConn
	p *tcpProber
}

// Result reports whether the attempt has ended, and how: nil when the
// target answered. Asked before ready was called, it may report an
// attempt that has in fact ended as not done, and an attempt that is not
// done is watched for its next event.
func (a *Pending) Result() (done bool, err error) {
	done, err = a.c.result()
	if err != nil {
		err = a.p.outcome(attemptErr(err))
	}
	return done, err
}

// Close ends the attempt, answered or not, and gives its socket back to
// the prober for the next. Its ready is not called once Close has
// returned.
func (a *Pending) Close() {
	if fd := a.c.release(); fd >= 0 {
		a.p.recycle(fd)
	}
}

// dialTCP connects a fresh TCP socket, created through s, to dst, and
// returns it. re learns from a failed connect, and names the ICMP error
// behind the next.
func dialTCP(ctx context.Context, s Sockets, dst netip.AddrPort, re *recvErr) (fd int, err error) {
	ready := make(chan struct{}, 1)
	c, connected, err := startConnect(s, -1, dst, re, func() {
		select {
		case ready <- struct{}{}:
		default:
		}
	})
	for err == nil && !connected {
		select {
		case <-ctx.Done():
			c.Close()
			return -1, ctxErr(ctx)
		case <-ready:
		}
		if connected, err = c.result(); err != nil {
			c.Close()
		}
	}
	if err != nil {
		return -1, ioErr(ctx, err)
	}
	return c.release(), nil
}

// tcpConn is a connect in flight on a socket of its own, made with raw
// syscalls only and watched in the process's epoll set (see epoll.go).
type tcpConn struct {
	fd  int
	dst netip.AddrPort
	re  *recvErr
	set *epollSet // where fd is watched; nil once it is not
}

// startConnect connects a socket to dst, without blocking: spare, one a
// tcpProber recycled, or when it is -1 a new one created through s. It
// returns the connection either connected or still connecting (ready is
// then called each time it may have ended; see result), or the connect's
// error: its errno, or an *ICMPError when re is armed and one refused it.
// re learns from that error.
func startConnect(s Sockets, spare int, dst netip.AddrPort, re *recvErr, ready func()) (c *tcpConn, connected bool, err error) {
	fd := spare
	if fd < 0 {
		domain := unix.AF_INET6
		if dst.Addr().Is4() {
			domain = unix.AF_INET
		}
		if fd, err = s.Socket(domain, unix.SOCK_STREAM, unix.IPPROTO_TCP); err != nil {
			return nil, false, err
		}
	}
	c = &tcpConn{fd: fd, dst: dst, re: re}
	if connected, err = c.connect(ready, spare < 0); err != nil {
		re.arm(err)
		c.Close()
		return nil, false, err
	}
	return c, connected, nil
}

func (c *tcpConn) connect(ready func(), fresh bool) (connected bool, err error) {
	// A zero linger makes close send a RST and free the socket at once: at
	// a few attempts a second, closing with a FIN would pile sockets up in
	// FIN_WAIT and TIME_WAIT in the pod netns. A recycled socket has it.
	if fresh {
		if err := setsockoptRaw(c.fd, unix.SOL_SOCKET, unix.SO_LINGER, unsafe.Pointer(&unix.Linger{Onoff: 1}), unix.SizeofLinger); err != nil {
			return false, err
		}
	}
	if err := c.re.set(c.fd, c.dst.Addr().Is6()); err != nil {
		return false, err
	}
	var raw unix.RawSockaddrInet6 // room for either family
	n, err := rawSockaddr(c.fd, c.dst, &raw)
	if err != nil {
		return false, err
	}
	_, _, errno := unix.RawSyscall(unix.SYS_CONNECT, uintptr(c.fd), uintptr(unsafe.Pointer(&raw)), n)
	switch errno {
	case 0, unix.EISCONN:
		return true, nil
	case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
	default:
		return false, c.connectErr(errno)
	}
	if c.set, err = watch(c.fd, ready); err != nil {
		return false, err
	}
	// Look before the first wait too: an ICMP error that came back while
	// connect itself held the socket (on a veth the whole path can run
	// inside the syscall) is kept as a soft error, which wakes nobody and
	// which the kernel acts on only at its retransmission, a second later.
	// SO_ERROR returns it.
	done, err := c.handshake(false)
	return done && err == nil, err
}

// result reports whether the connect has ended, and how; one that has not
// is watched for its next event. It is asked after ready was called.
func (c *tcpConn) result() (connected bool, err error) {
	done, err := c.handshake(true)
	switch {
	case err != nil:
		c.re.arm(err)
		return false, err
	case done:
		return true, nil
	}
	// Told of a predecessor's event (see handshake), or asked early:
	// watch for the next.
	if err := c.set.rearm(c.fd); err != nil {
		return false, err
	}
	return false, nil
}

// handshake reports whether the connect is over, and how. Before the first
// wake-up it looks for an error only: a connect that completes makes the
// socket writable, which the epoll set reports even when that was before
// the socket was added.
func (c *tcpConn) handshake(woken bool) (done bool, err error) {
	pending, err := soError(c.fd)
	if err != nil {
		return true, err
	}
	switch errno := pending; errno {
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
		_, _, errno := unix.RawSyscall(unix.SYS_GETPEERNAME, uintptr(c.fd), uintptr(unsafe.Pointer(&peer)), uintptr(unsafe.Pointer(&plen)))
		return errno == 0, nil
	default:
		return true, c.connectErr(errno)
	}
}

// soError reads, and so clears, fd's pending error (SO_ERROR).
func soError(fd int) (pending unix.Errno, err error) {
	v := int32(0)
	vlen := uint32(4)
	if _, _, errno := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_ERROR, uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&vlen)), 0); errno != 0 {
		return 0, errno
	}
	return unix.Errno(v), nil
}

// connectErr is errno, or the ICMP error behind it when re is armed.
func (c *tcpConn) connectErr(errno unix.Errno) error {
	if c.re.on.Load() {
		return icmpCause(c.fd, unix.IPPROTO_TCP, c.dst.Addr(), errno)
	}
	return errno
}

// release stops watching the socket and hands it to the caller.
func (c *tcpConn) release() int {
	if c.set != nil {
		c.set.unwatch(c.fd)
		c.set = nil
	}
	fd := c.fd
	c.fd = -1
	return fd
}

// Close stops watching the socket and closes it.
func (c *tcpConn) Close() {
	if fd := c.release(); fd >= 0 {
		rawClose(fd)
	}
}

var _ Starter = (*tcpProber)(nil)
