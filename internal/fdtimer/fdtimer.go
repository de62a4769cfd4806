// Package fdtimer is a one-shot timer on a Linux timerfd, read through Go's
// poller: what a waiting ADD sleeps on between its attempts.
//
// A Go timer wakes an idle process twice on Linux: the runtime's poller
// waits in whole milliseconds, rounded down (golang.org/issue/53824), so it
// wakes up to a millisecond early, finds the timer not due and sleeps once
// more. Meanwhile the runtime's sysmon thread, which sleeps until the next
// timer with nanosecond precision, wakes on time and polls every 20 µs
// until the timer has run; the first syscall of the tick has reset it to
// that pace. On the 2-core VM this project is measured on, a process that
// sends one SYN every 40 ms spent 5.6-9.2 ms of CPU a second paced by a Go
// ticker and 3.3-4.7 ms paced by a timerfd (a standalone program, three runs
// each, recorded in the README's performance section). A timerfd is a file
// the poller waits on: the kernel wakes the process once, when it is due.
package fdtimer

import (
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// coalesce is how close a new deadline may be to the armed one and leave
// the timerfd as it is: the gate re-arms its timer after every wake-up,
// mostly for the same deadline, and each timerfd_settime is a syscall.
const coalesce = 50 * time.Microsecond

// Timer fires once per Reset, on C. Reset and Stop are for one goroutine at
// a time (the gate's); C may deliver a firing that a later Reset made
// stale, which the gate, like a user of time.Timer before Go 1.23, takes
// as a spurious wake-up.
type Timer struct {
	f  *os.File
	rc syscall.RawConn
	c  chan time.Time

	armed time.Time // the deadline the timerfd holds; zero when disarmed
	done  chan struct{}
}

// New makes a disarmed timer and starts the goroutine that waits on it.
func New() (*Timer, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("timerfd_create", err)
	}
	f := os.NewFile(uintptr(fd), "timerfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	t := &Timer{f: f, rc: rc, c: make(chan time.Time, 1), done: make(chan struct{})}
	go t.wait()
	return t, nil
}

// C delivers the time of each firing.
func (t *Timer) C() <-chan time.Time { return t.c }

// Reset arms the timer to fire once, d from now (at once when d ≤ 0),
// replacing what it was armed for. An error leaves it as it was; the gate
// then wakes on its other events, or at its deadline.
func (t *Timer) Reset(d time.Duration) {
	now := time.Now()
	at := now.Add(d)
	// Only a deadline still to come is pending in the kernel: one that has
	// passed fired already (or is firing), and must be armed again.
	if t.armed.After(now) && absDiff(at, t.armed) < coalesce {
		return
	}
	// A zero it_value disarms a timerfd: the least it can wait is 1 ns.
	if t.settime(unix.ItimerSpec{Value: unix.NsecToTimespec(max(int64(d), 1))}) == nil {
		t.armed = at
	}
}

// Stop disarms the timer.
func (t *Timer) Stop() {
	t.armed = time.Time{}
	t.settime(unix.ItimerSpec{})
}

// settime sets the timerfd through the RawConn (File.Fd would put the file
// back in blocking mode), with a raw syscall: it never blocks, and
// unix.TimerfdSettime would wake sysmon at every re-arm.
func (t *Timer) settime(its unix.ItimerSpec) error {
	var errno unix.Errno
	if cerr := t.rc.Control(func(fd uintptr) {
		_, _, errno = unix.RawSyscall6(unix.SYS_TIMERFD_SETTIME, fd, 0, uintptr(unsafe.Pointer(&its)), 0, 0, 0)
	}); cerr != nil {
		return cerr
	}
	if errno != 0 {
		return os.NewSyscallError("timerfd_settime", errno)
	}
	return nil
}

// Close stops the timer and its goroutine, and returns once it has ended.
func (t *Timer) Close() error {
	err := t.f.Close()
	<-t.done
	return err
}

// wait sends on c each time the timerfd fires, until it is closed.
func (t *Timer) wait() {
	defer close(t.done)
	var n uint64 // expirations since the last read
	// The callback returns false after a firing too: the read drained the
	// timerfd, so the poller can wait for the next edge without a read that
	// would only say EAGAIN. Read returns only when the file is closed.
	t.rc.Read(func(fd uintptr) bool {
		// A raw read: 8 bytes from a non-blocking timerfd never block, and
		// syscall.Read would wake sysmon (see the package comment).
		_, _, errno := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&n)), unsafe.Sizeof(n))
		for errno == unix.EINTR {
			_, _, errno = unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&n)), unsafe.Sizeof(n))
		}
		if errno == 0 {
			select {
			case t.c <- time.Now():
			default: // a firing is already waiting
			}
		}
		return false
	})
}

func absDiff(a, b time.Time) time.Duration {
	if d := a.Sub(b); d >= 0 {
		return d
	}
	return b.Sub(a)
}
