package gate

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// The gate's tests run twice: as written, each active attempt a goroutine
// running Check, and once more (TestViaStart, in a child process) with
// every active condition made through Start instead, whose attempts the
// gate keeps on its own goroutine.
const viaStartEnv = "NETREADY_GATE_VIA_START"

// runGate is Run, with the conditions made through Start in the child.
func runGate(ctx context.Context, conds []Condition, opt Options) *Report {
	if os.Getenv(viaStartEnv) == "1" {
		conds = viaStart(ctx, conds)
	}
	return Run(ctx, conds, opt)
}

func TestViaStart(t *testing.T) {
	if os.Getenv(viaStartEnv) == "1" {
		t.Skip("in the child")
	}
	cmd := exec.Command(os.Args[0], "-test.run=.", "-test.skip=^TestViaStart$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), viaStartEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the gate's tests with every attempt made through Start: %v\n%s", err, out)
	}
}

// viaStart makes each active condition's attempts through Start: each runs
// Check on a goroutine of its own, which calls ready when Check returns.
func viaStart(ctx context.Context, conds []Condition) []Condition {
	out := make([]Condition, len(conds))
	for i, c := range conds {
		if c.Kind == Active && c.Start == nil {
			check := c.Check
			c.Check = func(context.Context) error { panic("the gate called Check of a condition with Start") }
			c.Start = func(ready func()) (Attempt, error) { return startCheck(ctx, check, ready), nil }
		}
		out[i] = c
	}
	return out
}

// checkAttempt is an attempt of startCheck.
type checkAttempt struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when check has returned
	mu     sync.Mutex
	ended  bool
	err    error
	closed bool
}

func startCheck(ctx context.Context, check func(context.Context) error, ready func()) *checkAttempt {
	ctx, cancel := context.WithCancel(ctx)
	a := &checkAttempt{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		err := check(ctx)
		a.mu.Lock()
		defer a.mu.Unlock()
		a.ended, a.err = true, err
		if !a.closed {
			ready()
		}
	}()
	return a
}

func (a *checkAttempt) Result() (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		panic("Result of a closed attempt")
	}
	return a.ended, a.err
}

func (a *checkAttempt) Close() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		panic("attempt closed twice")
	}
	a.closed = true
	a.mu.Unlock()
	a.cancel()
	<-a.done
}

// fakeStarts are Start's attempts that the test ends: each waits until
// answer or refuse is called, and counts how many are open.
type fakeStarts struct {
	mu       sync.Mutex
	open     map[*fakeStart]bool
	started  int
	peak     int
	inline   func(n int) (ended bool, err error) // an attempt that ends inside Start
	readyNow bool                                // ready is called before Start returns, too
	closes   []int                               // the attempts open at each Condition.Close
}

// close is Condition.Close.
func (s *fakeStarts) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closes = append(s.closes, len(s.open))
}

type fakeStart struct {
	s     *fakeStarts
	ready func()
	done  bool
	err   error
}

func (s *fakeStarts) start(ready func()) (Attempt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.started
	s.started++
	if s.inline != nil {
		if ended, err := s.inline(n); ended {
			if s.readyNow {
				ready()
			}
			return nil, err
		}
	}
	a := &fakeStart{s: s, ready: ready}
	s.open[a] = true
	s.peak = max(s.peak, len(s.open))
	if s.readyNow {
		ready() // not ended: the gate must ask, find it not done, and keep it
	}
	return a, nil
}

// end ends every open attempt with err.
func (s *fakeStarts) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for a := range s.open {
		if !a.done {
			a.done, a.err = true, err
			a.ready()
		}
	}
}

// endAfter ends every open attempt with err after d.
func (s *fakeStarts) endAfter(d time.Duration, err error) {
	time.Sleep(d)
	s.end(err)
}

func (s *fakeStarts) counts() (started, open, peak int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started, len(s.open), s.peak
}

func (a *fakeStart) Result() (bool, error) {
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	if !a.s.open[a] {
		panic("Result of a closed attempt")
	}
	return a.done, a.err
}

func (a *fakeStart) Close() {
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	if !a.s.open[a] {
		panic("attempt closed twice")
	}
	delete(a.s.open, a)
}

func newFakeStarts() *fakeStarts { return &fakeStarts{open: map[*fakeStart]bool{}} }

func startCond(s *fakeStarts) Condition {
	return Condition{Name: "tcp://10.0.0.5:5432", Kind: Active, Start: s.start, Close: s.close,
		Check: func(context.Context) error { panic("Check called for a condition with Start") }}
}

// Attempts that end inside Start count as attempts, errors and all, and
// one that answers there makes the condition ready.
func TestStartEndsInline(t *testing.T) {
	for _, readyNow := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			s := newFakeStarts()
			s.readyNow = readyNow
			s.inline = func(n int) (bool, error) {
				if n < 3 {
					return true, errRefused
				}
				return true, nil
			}
			rep := Run(t.Context(), []Condition{startCond(s)}, Options{Interval: 10 * time.Millisecond})
			st := rep.Conditions[0]
			if !rep.Ready() || st.Attempts != 4 || st.LastErr != errRefused {
				t.Errorf("ready %v after %d attempts, last error %v; want ready after 4, the last refused", rep.Ready(), st.Attempts, st.LastErr)
			}
			if st.After != 70*time.Millisecond {
				t.Errorf("ready after %v, want 70ms (attempts at 0, 10, 30, 70ms: the gap doubles)", st.After)
			}
		})
	}
}

// Attempts in flight are capped, the oldest closed; one that times out is
// closed as such; every attempt is closed once, the last when Run returns.
func TestStartAttemptsClosed(t *testing.T) {
	for _, readyNow := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			s := newFakeStarts()
			s.readyNow = readyNow
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			rep := Run(ctx, []Condition{startCond(s)}, Options{
				Interval: 10 * time.Millisecond, MaxInterval: 40 * time.Millisecond, MaxInFlight: 4,
				AttemptTimeout: 100 * time.Millisecond,
			})
			started, open, peak := s.counts()
			if open != 0 {
				t.Errorf("%d of %d attempts open after Run returned", open, started)
			}
			if !slices.Equal(s.closes, []int{0}) {
				t.Errorf("Condition.Close called with these many attempts open: %v, want once with none", s.closes)
			}
			if peak > 4 {
				t.Errorf("%d attempts open at once, want at most MaxInFlight (4)", peak)
			}
			st := rep.Conditions[0]
			if st.Ready || st.Attempts != started || started < 20 {
				t.Errorf("ready %v, %d attempts counted of %d started; want not ready, ~26", st.Ready, st.Attempts, started)
			}
			if want := "no answer within 100ms"; st.LastErr == nil || st.LastErr.Error() != want {
				t.Errorf("last error %v, want %q", st.LastErr, want)
			}
		})
	}
}

// An answer to one of several attempts in flight makes the condition ready
// and closes the others.
func TestStartAnswerClosesTheRest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newFakeStarts()
		go s.endAfter(55*time.Millisecond, nil)
		rep := Run(t.Context(), []Condition{startCond(s)}, Options{Interval: 10 * time.Millisecond})
		started, open, _ := s.counts()
		if !rep.Ready() || open != 0 {
			t.Errorf("ready %v with %d of %d attempts open; want ready, none open", rep.Ready(), open, started)
		}
		if st := rep.Conditions[0]; st.After != 55*time.Millisecond {
			t.Errorf("ready after %v, want 55ms", st.After)
		}
	})
}

// While the gate waits on, the attempts that ended (answered, or dropped
// by the answer) are closed: they are left open only when the answer
// makes the gate done.
func TestStartClosedWhileWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newFakeStarts()
		go s.endAfter(55*time.Millisecond, nil)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan *Report, 1)
		go func() {
			done <- Run(ctx, []Condition{startCond(s), {Name: "dns://10.0.0.10/db.", Kind: Active, Check: hang}},
				Options{Interval: 10 * time.Millisecond})
		}()
		time.Sleep(100 * time.Millisecond)
		if started, open, _ := s.counts(); started < 3 || open != 0 {
			t.Errorf("answered 45ms ago, the gate still waiting on another condition: %d of %d attempts open, want 0 of 3 (at 0, 10, 30ms)", open, started)
		}
		cancel()
		if rep := <-done; !rep.Conditions[0].Ready || rep.Conditions[1].Ready {
			t.Errorf("ready %v, %v; want the first only", rep.Conditions[0].Ready, rep.Conditions[1].Ready)
		}
	})
}
