// Package probe runs single attempts of netready's probes (icmp, tcp, dns,
// http, https) from inside a pod's network namespace.
package probe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/netready/netready/pkg/config"
)

// Prober makes attempts at one probe.
//
// Attempt makes one attempt on a fresh socket: netready never waits for the
// kernel to retransmit, its own schedule fires the next attempt instead. The
// deadline of ctx is the attempt timeout, and cancelling ctx closes the socket
// and returns at once. A nil error means the target answered.
//
// Errors are terse, written to follow the probe URL in a report ("connection
// refused", "HTTP 503, want 200-399"), and unwrap to their cause: the
// syscall.Errno (errors.Is(err, syscall.EHOSTUNREACH)), or for an attempt
// that ran out of time context.DeadlineExceeded and os.ErrDeadlineExceeded.
//
// A Prober is safe for concurrent use: the gate keeps several attempts at a
// target in flight.
type Prober interface {
	Attempt(ctx context.Context) error
}

// A Starter is a Prober whose attempts can also be made without a
// goroutine each: Start sends one and returns at once, and the caller asks
// the attempt's Result when told it is ready. A waiting ADD makes about 25
// attempts a second, most never answered; a goroutine and a context for
// each cost more than the attempt's syscalls (see epoll.go). The gate uses
// Start when a probe has it (TCP), Attempt otherwise.
type Starter interface {
	Prober
	Start(ready func()) (*Pending, error)
	// Close closes the sockets kept for Start to use again (see
	// tcpProber.recycle); Start must not be called after it.
	Close()
}

// Sockets creates sockets in the network namespace that probes run from.
//
// Socket returns a socket(2) file descriptor, opened with SOCK_NONBLOCK and
// SOCK_CLOEXEC added to typ, that the caller owns. A socket stays in the
// namespace it was created in, so only its creation has to happen there:
// all I/O on it runs on ordinary goroutines through Go's poller.
type Sockets interface {
	Socket(domain, typ, proto int) (fd int, err error)
}

// New returns the Prober for p that creates its sockets with s. p is as
// config.ParseProbe returned it (or, for a gateway, an icmp probe of an
// address from prevResult): New checks none of what the parser checked.
func New(p config.Probe, s Sockets) (Prober, error) {
	p.Addr = p.Addr.Unmap()
	switch p.Scheme {
	case config.ICMP:
		return &icmpProber{socks: s, dst: p.Addr}, nil
	case config.TCP:
		return &tcpProber{socks: s, dst: p.AddrPort(), refusedOK: p.RefusedOK}, nil
	case config.DNS:
		return newDNS(p, s)
	case config.HTTP, config.HTTPS:
		return newHTTP(p, s)
	}
	return nil, fmt.Errorf("probe %s: unknown scheme %q", p, p.Scheme)
}

// errTimeout is an attempt that got no answer before its deadline.
var errTimeout error = timeoutError{}

type timeoutError struct{}

func (timeoutError) Error() string { return "i/o timeout" }
func (timeoutError) Timeout() bool { return true }

func (timeoutError) Is(target error) bool {
	return target == context.DeadlineExceeded || target == os.ErrDeadlineExceeded
}

// terseError has a text of its own for an operator but still unwraps to its
// cause, so that errors.Is keeps working.
type terseError struct {
	msg string
	err error
}

func (e *terseError) Error() string { return e.msg }
func (e *terseError) Unwrap() error { return e.err }

// attemptErr turns an error from a socket call made outside any context
// into what an operator reads.
func attemptErr(err error) error {
	switch e := err.(type) {
	case *ICMPError:
		return e
	case syscall.Errno:
		return errnoErr(e)
	}
	return err
}

// ioErr turns an error from a socket call into what an operator reads.
func ioErr(ctx context.Context, err error) error {
	// The common cases first, without errors.As's reflection: a waiting
	// ADD ends most of its attempts here, each closed by a newer one.
	switch e := err.(type) {
	case *ICMPError:
		return e
	case syscall.Errno:
		return errnoErr(e)
	}
	if err == context.Canceled && ctx.Err() != nil {
		return ctxErr(ctx)
	}
	var errno syscall.Errno
	var icmpErr *ICMPError
	switch {
	case errors.As(err, &icmpErr):
		return icmpErr // it says more than its errno
	case errors.As(err, &errno):
		return errnoErr(errno)
	case ctx.Err() != nil:
		// ctx ending closes the socket: the error is our own doing, report why.
		return ctxErr(ctx)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errTimeout
	}
	return err
}

func ctxErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return errTimeout
	}
	return ctx.Err()
}

// errnoErr gives the errnos whose own text misleads an operator a better one.
func errnoErr(errno syscall.Errno) error {
	switch errno {
	case syscall.EACCES:
		// What connect and sendto return for a route of type prohibit, and
		// connect for a SYN refused by an ICMPv6 administratively prohibited.
		return &terseError{"administratively prohibited (permission denied)", errno}
	case syscall.EPERM:
		// What sendto returns when a netfilter rule drops the packet on output.
		return &terseError{"dropped by local firewall (operation not permitted)", errno}
	}
	return errno
}

// noAnswer names what was missing when err is a timeout.
func noAnswer(what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &terseError{what, err}
	}
	return err
}
