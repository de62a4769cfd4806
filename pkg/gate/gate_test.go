package gate

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// The tests run in a synctest bubble: time is fake and advances only when
// every goroutine is blocked, so schedules and deadlines are exact.

var errRefused = errors.New("connection refused")

// recorder is an active check that logs when each attempt started.
type recorder struct {
	mu     sync.Mutex
	starts []time.Duration // guarded by mu
	t0     time.Time
	fn     func(ctx context.Context, n int) error
	live   atomic.Int32
	peak   atomic.Int32
}

func newRecorder(fn func(ctx context.Context, n int) error) *recorder {
	return &recorder{t0: time.Now(), fn: fn}
}

func (r *recorder) check(ctx context.Context) error {
	r.mu.Lock()
	n := len(r.starts)
	r.starts = append(r.starts, time.Since(r.t0))
	r.mu.Unlock()
	live := r.live.Add(1)
	defer r.live.Add(-1)
	for {
		peak := r.peak.Load()
		if live <= peak || r.peak.CompareAndSwap(peak, live) {
			break
		}
	}
	return r.fn(ctx, n)
}

func (r *recorder) startTimes() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Duration(nil), r.starts...)
}

func ms(n ...int) []time.Duration {
	out := make([]time.Duration, len(n))
	for i, v := range n {
		out[i] = time.Duration(v) * time.Millisecond
	}
	return out
}

// from is a Watch that hands the gate w: with no FirstRound, from the
// start.
func from(w Wakeups) func(context.Context, context.CancelCauseFunc, []bool) (Wakeups, error) {
	return func(context.Context, context.CancelCauseFunc, []bool) (Wakeups, error) { return w, nil }
}

// hang waits for the attempt to be closed, as a dropped SYN does.
func hang(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

func hangN(ctx context.Context, _ int) error { return hang(ctx) }

func TestReadyAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ok := func(context.Context) error { return nil }
		rep := runGate(t.Context(), []Condition{
			{Name: "link eth0", Kind: Local, Check: ok},
			{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: ok},
		}, Options{})
		if !rep.Ready() || rep.Waited != 0 {
			t.Fatalf("Ready=%v Waited=%v, want ready at once: %s", rep.Ready(), rep.Waited, rep.Summary())
		}
		for _, c := range rep.Conditions {
			if c.Attempts != 1 || c.After != 0 {
				t.Errorf("%s: %d attempts, ready after %v; want 1 at 0s", c.Name, c.Attempts, c.After)
			}
		}
	})
}

func TestScheduleBacksOffToMaxInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder(func(context.Context, int) error { return errRefused })
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		rep := runGate(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
			Options{Interval: 10 * time.Millisecond, MaxInterval: 40 * time.Millisecond})
		if got, want := rec.startTimes(), ms(0, 10, 30, 70, 110, 150, 190); !slices.Equal(got, want) {
			t.Errorf("attempts at %v, want %v", got, want)
		}
		if rep.Ready() || rep.Err != nil {
			t.Fatalf("Ready=%v Err=%v, want a plain timeout", rep.Ready(), rep.Err)
		}
		if rep.Waited != 200*time.Millisecond {
			t.Errorf("Waited=%v, want the whole 200ms budget", rep.Waited)
		}
		if got, want := rep.Summary(), "tcp://10.0.0.5:5432: connection refused (7 attempts)"; got != want {
			t.Errorf("Summary()=%q, want %q", got, want)
		}
	})
}

func TestFirstSuccessWinsAndClosesTheRest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var closed atomic.Int32
		opened := 45 * time.Millisecond
		t0 := time.Now()
		rec := newRecorder(func(ctx context.Context, n int) error {
			if time.Since(t0) >= opened {
				time.Sleep(2 * time.Millisecond) // one round trip
				return nil
			}
			<-ctx.Done() // sent before the path opened: dropped
			closed.Add(1)
			return ctx.Err()
		})
		rep := runGate(t.Context(), []Condition{{Name: "icmp://10.0.0.1", Kind: Active, Check: rec.check}}, Options{})
		// Attempts at 0, 10, 30 hang; the one at 70 is the first after the opening.
		if !rep.Ready() || rep.Conditions[0].After != 72*time.Millisecond {
			t.Fatalf("Ready=%v after %v, want ready at 72ms: %s", rep.Ready(), rep.Conditions[0].After, rep.Summary())
		}
		if got := closed.Load(); got != 3 {
			t.Errorf("%d hanging attempts closed, want all 3", got)
		}
	})
}

func TestInFlightCapClosesOldest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder(hangN)
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		rep := runGate(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
			Options{MaxInFlight: 4, AttemptTimeout: time.Second})
		// The closed attempt returns just after its replacement starts, so
		// for an instant there is one more than the cap.
		if peak := rec.peak.Load(); peak > 5 {
			t.Errorf("peak attempts in flight = %d, want the cap of 4 (+1 closing)", peak)
		}
		if st := rep.Conditions[0]; !errors.Is(st.LastErr, ErrNoAnswer) {
			t.Errorf("LastErr=%v, want %v", st.LastErr, ErrNoAnswer)
		}
		// 0,10,30,70 then every 40ms up to 2s: 4 + 48.
		if got := rep.Conditions[0].Attempts; got != 52 {
			t.Errorf("%d attempts in 2s, want 52 (the schedule, not more)", got)
		}
	})
}

func TestAttemptTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 120*time.Millisecond)
		defer cancel()
		rep := runGate(ctx, []Condition{{Name: "dns://10.0.0.10/db.", Kind: Active, Check: hang}},
			Options{AttemptTimeout: 50 * time.Millisecond, MaxInFlight: 100})
		want := "no answer within 50ms"
		if err := rep.Conditions[0].LastErr; err == nil || err.Error() != want {
			t.Errorf("LastErr=%v, want %q", err, want)
		}
	})
}

// A firewall's reject reaches one attempt in many (the kernel rate-limits
// ICMP errors); the others time out. The report keeps the reject.
func TestLastCauseOutlivesTimeouts(t *testing.T) {
	errRejected := errors.New("rejected by 10.42.0.1 (ICMP host administratively prohibited)")
	for _, c := range []struct {
		name      string
		fn        func(ctx context.Context, n int) error
		wantCause error
		summary   string
	}{
		{"rejects then timeouts", func(ctx context.Context, n int) error {
			if n%25 == 0 {
				return errRejected
			}
			return hang(ctx)
		}, errRejected, "tcp://198.51.100.10:5432: no answer within 50ms, earlier: rejected by 10.42.0.1 (ICMP host administratively prohibited) (32 attempts)"},
		{"only timeouts", hangN, nil, "tcp://198.51.100.10:5432: no answer within 50ms (32 attempts)"},
		{"the last attempt's own error", func(ctx context.Context, n int) error {
			if n < 3 {
				return errRejected
			}
			return errRefused
		}, nil, "tcp://198.51.100.10:5432: connection refused (32 attempts)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rec := newRecorder(c.fn)
				ctx, cancel := context.WithTimeout(t.Context(), 1200*time.Millisecond)
				defer cancel()
				rep := runGate(ctx, []Condition{{Name: "tcp://198.51.100.10:5432", Kind: Active, Check: rec.check}},
					Options{AttemptTimeout: 50 * time.Millisecond, MaxInFlight: 100})
				if st := rep.Conditions[0]; st.LastCause != c.wantCause {
					t.Errorf("LastCause = %v, want %v (LastErr %v)", st.LastCause, c.wantCause, st.LastErr)
				}
				if got := rep.Summary(); got != c.summary {
					t.Errorf("Summary()=%q\nwant       %q", got, c.summary)
				}
			})
		})
	}
}

func TestNodeEventTriggersImmediateAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var open atomic.Bool
		rec := newRecorder(func(ctx context.Context, _ int) error {
			if open.Load() {
				return nil
			}
			return errRefused
		})
		events := make(chan struct{}, 1)
		go func() {
			time.Sleep(1005 * time.Millisecond) // between two scheduled attempts (990, 1030)
			open.Store(true)
			events <- struct{}{}
		}()
		rep := runGate(t.Context(), []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
			Options{Watch: from(Wakeups{NodeChanged: events})})
		if got := rep.Conditions[0].After; !rep.Ready() || got != 1005*time.Millisecond {
			t.Fatalf("ready after %v, want at the event (1.005s)", got)
		}
	})
}

// TestEventStormIsRateLimited: a storm of node events at 500ms, between two
// scheduled attempts (470ms, 510ms), fires attempts at that instant: a gate
// that ignored events would fire none, one without a limit one an event.
func TestEventStormIsRateLimited(t *testing.T) {
	const at = 500 * time.Millisecond
	starts := func(storm int) []time.Duration {
		var got []time.Duration
		synctest.Test(t, func(t *testing.T) {
			rec := newRecorder(func(context.Context, int) error { return errRefused })
			events := make(chan struct{})
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			go func() {
				time.Sleep(at)
				for range storm {
					select {
					case events <- struct{}{}:
					case <-ctx.Done():
						return
					}
				}
			}()
			runGate(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
				Options{Watch: from(Wakeups{NodeChanged: events})})
			got = rec.startTimes()
		})
		return got
	}
	count := func(starts []time.Duration, d time.Duration) (n int) {
		for _, s := range starts {
			if s == d {
				n++
			}
		}
		return n
	}
	quiet := starts(0)
	if n := count(quiet, at); n != 0 {
		t.Fatalf("without events %d attempts at %v, want none: the test needs an instant off the schedule %v", n, at, quiet)
	}
	for _, storm := range []int{1, 2, 100} {
		got := starts(storm)
		if n, want := count(got, at), min(storm, eventBurst); n != want {
			t.Errorf("%d events at %v: %d attempts then, want %d (one an event, up to the burst of %d)", storm, at, n, want, eventBurst)
		}
		// An event's attempt replaces the next scheduled one: only the
		// burst beyond the first adds to the schedule's count.
		if len(got) > len(quiet)+eventBurst-1 {
			t.Errorf("%d events: %d attempts in 1s, want at most %d: events must not flood the target", storm, len(got), len(quiet)+eventBurst-1)
		}
	}
}

// TestEventsAddAFewAttemptsASecond: each attempt makes an event a
// millisecond later (a pod's own SYN refreshes a neighbour entry; on a node
// with 110 new pods, neighbour entries of other pods age all the time).
// Events may add at most one attempt per eventRefill to the schedule's 25
// a second, so that one pod stays under 30 packets a second, and a node,
// with its followers' 8, under 40.
func TestEventsAddAFewAttemptsASecond(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		events := make(chan struct{}, 1)
		rec := newRecorder(func(ctx context.Context, _ int) error {
			time.Sleep(time.Millisecond)
			select {
			case events <- struct{}{}:
			default:
			}
			return errRefused
		})
		const waited = 4 * time.Second
		ctx, cancel := context.WithTimeout(t.Context(), waited)
		defer cancel()
		runGate(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
			Options{Watch: from(Wakeups{PodChanged: events})})
		// The schedule's ramp (0, 10, 30, 70 ms) and the burst add a few.
		limit := int(waited/(40*time.Millisecond)) + int(waited/eventRefill) + eventBurst + 3
		if n := len(rec.startTimes()); n > limit {
			t.Errorf("%d attempts in %v, want at most %d: the schedule's 25 a second and one event attempt per %v", n, waited, limit, eventRefill)
		}
	})
}

func TestLocalConditionsFollowPodEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var routeAdded atomic.Bool
		var evals atomic.Int32
		route := func(context.Context) error {
			evals.Add(1)
			if !routeAdded.Load() {
				return errors.New("no route")
			}
			return nil
		}
		node, pod := make(chan struct{}), make(chan struct{})
		go func() {
			time.Sleep(300 * time.Millisecond)
			node <- struct{}{} // not a pod change: local state is not read again
			routeAdded.Store(true)
			time.Sleep(100 * time.Millisecond)
			pod <- struct{}{}
		}()
		rep := runGate(t.Context(), []Condition{{Name: "route to 10.0.0.5", Kind: Local, Check: route}},
			Options{Watch: from(Wakeups{PodChanged: pod, NodeChanged: node})})
		if !rep.Ready() || rep.Conditions[0].After != 400*time.Millisecond {
			t.Fatalf("ready=%v after %v, want ready at the pod event (400ms)", rep.Ready(), rep.Conditions[0].After)
		}
		if got := evals.Load(); got != 2 {
			t.Errorf("local condition evaluated %d times, want 2 (start, pod event): no polling", got)
		}
	})
}

func TestLocalConditionCanRegress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var up atomic.Bool
		up.Store(true)
		link := func(context.Context) error {
			if !up.Load() {
				return errors.New("link eth0 is down")
			}
			return nil
		}
		events := make(chan struct{})
		go func() {
			time.Sleep(10 * time.Millisecond)
			up.Store(false)
			events <- struct{}{}
		}()
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		rep := runGate(ctx, []Condition{
			{Name: "link eth0", Kind: Local, Check: link},
			{Name: "icmp://10.0.0.1", Kind: Active, Check: hang},
		}, Options{Watch: from(Wakeups{PodChanged: events})})
		if rep.Ready() || rep.Conditions[0].Ready {
			t.Fatalf("link reported ready after it went down: %s", rep.Summary())
		}
		if !strings.Contains(rep.Summary(), "link eth0: link eth0 is down") {
			t.Errorf("Summary()=%q, want the link's error", rep.Summary())
		}
	})
}

func TestPermanentErrorStopsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gone := errors.New("netns /var/run/netns/pod is gone")
		rec := newRecorder(hangN)
		events := make(chan struct{})
		var torn atomic.Bool
		go func() {
			time.Sleep(50 * time.Millisecond)
			torn.Store(true)
			events <- struct{}{}
		}()
		rep := runGate(t.Context(), []Condition{
			{Name: "link eth0", Kind: Local, Check: func(context.Context) error {
				if torn.Load() {
					return Permanent(gone)
				}
				return nil
			}},
			{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check},
		}, Options{Watch: from(Wakeups{PodChanged: events})})
		if !errors.Is(rep.Err, gone) || rep.Waited != 50*time.Millisecond || rep.Ready() {
			t.Fatalf("Err=%v after %v, want %v at the event (50ms)", rep.Err, rep.Waited, gone)
		}
	})
}

func TestCancelCauseIsReported(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gone := errors.New("netns removed")
		ctx, cancel := context.WithCancelCause(t.Context())
		go func() {
			time.Sleep(30 * time.Millisecond)
			cancel(gone)
		}()
		rep := runGate(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: hang}}, Options{})
		if !errors.Is(rep.Err, gone) {
			t.Fatalf("Err=%v, want the cancel cause %v", rep.Err, gone)
		}
	})
}

func TestCancelStopsAndWaitsForAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder(hangN)
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			time.Sleep(100 * time.Millisecond)
			cancel() // SIGTERM
		}()
		rep := runGate(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}}, Options{})
		if !errors.Is(rep.Err, context.Canceled) || rep.Waited != 100*time.Millisecond {
			t.Fatalf("Err=%v Waited=%v, want canceled at 100ms", rep.Err, rep.Waited)
		}
		if live := rec.live.Load(); live != 0 {
			t.Errorf("%d attempts still running after Run returned", live)
		}
	})
}

// TestDetachDelay: with a DetachDelay the closing starts only once it has
// passed (a process that exits first never pays for it), and then closes
// everything, for one that lives on.
func TestDetachDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var wakeClosed atomic.Bool
		rec := newRecorder(func(ctx context.Context, n int) error {
			if n > 0 {
				return nil
			}
			<-ctx.Done() // the first attempt is in flight when the second answers
			return ctx.Err()
		})
		rep := runGate(t.Context(), []Condition{{Name: "db", Kind: Active, Check: rec.check}}, Options{
			Interval: 10 * time.Millisecond, Detach: true, DetachDelay: time.Second,
			Watch: from(Wakeups{Close: func() { wakeClosed.Store(true) }}),
		})
		returned := time.Now()
		time.Sleep(999 * time.Millisecond)
		synctest.Wait()
		if wakeClosed.Load() {
			t.Error("Wakeups.Close ran before the delay was over")
		}
		<-rep.Closed
		if took := time.Since(returned); took != time.Second {
			t.Errorf("closed %v after Run returned, want 1s", took)
		}
		if !wakeClosed.Load() || rec.live.Load() != 0 {
			t.Errorf("Report.Closed is closed, Wakeups closed %v, %d attempts live; want all closed", wakeClosed.Load(), rec.live.Load())
		}
	})
}

// TestDetachReturnsBeforeClosing: with Detach, Run returns its report while
// an attempt in flight is slow to close, and closes it and then the
// Wakeups afterwards, and then Report.Closed; in order, Run waits for them.
func TestDetachReturnsBeforeClosing(t *testing.T) {
	for _, detach := range []bool{true, false} {
		t.Run(map[bool]string{true: "detach", false: "in order"}[detach], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				release := make(chan struct{})
				var wakeClosed atomic.Bool
				rec := newRecorder(func(ctx context.Context, n int) error {
					if n > 0 {
						return nil
					}
					<-ctx.Done()
					<-release // a socket slow to close
					return ctx.Err()
				})
				done := make(chan *Report, 1)
				go func() {
					done <- runGate(t.Context(), []Condition{{Name: "db", Kind: Active, Check: rec.check}}, Options{
						Interval: 10 * time.Millisecond, Detach: detach,
						Watch: from(Wakeups{Close: func() { wakeClosed.Store(true) }}),
					})
				}()
				time.Sleep(time.Second) // the second attempt answered long ago
				var rep *Report
				select {
				case rep = <-done:
					if !detach {
						t.Fatal("Run returned before the attempt in flight was closed")
					}
					select {
					case <-rep.Closed:
						t.Fatal("Report.Closed is closed before the attempt in flight was")
					default:
					}
					if wakeClosed.Load() {
						t.Error("Wakeups.Close ran before the attempts in flight were closed")
					}
				default:
					if detach {
						t.Fatal("Run with Detach waited for the attempt in flight to close")
					}
				}
				close(release)
				if rep == nil {
					rep = <-done
				}
				<-rep.Closed
				if !wakeClosed.Load() {
					t.Error("Report.Closed is closed but Wakeups.Close did not run")
				}
				if !rep.Ready() {
					t.Errorf("report not ready: %s", rep.Summary())
				}
			})
		})
	}
}
