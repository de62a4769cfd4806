package gate

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// watchRecorder is a Watch that counts its calls and when they came, hands
// the gate its Wakeups, and records whether attempts were still running
// when the gate closed them.
type watchRecorder struct {
	t0      time.Time
	w       Wakeups
	err     error
	calls   atomic.Int32
	at      atomic.Int64 // time.Duration since t0 of the last call
	end     context.CancelCauseFunc
	closed  atomic.Bool
	running func() int32 // attempts running, read at Close
	atClose atomic.Int32
}

func newWatch(w Wakeups) *watchRecorder { return &watchRecorder{t0: time.Now(), w: w} }

func (r *watchRecorder) watch(_ context.Context, end context.CancelCauseFunc) (Wakeups, error) {
	r.calls.Add(1)
	r.at.Store(int64(time.Since(r.t0)))
	r.end = end
	w := r.w
	w.Close = func() {
		r.closed.Store(true)
		if r.running != nil {
			r.atClose.Store(r.running())
		}
	}
	return w, r.err
}

func TestFirstRoundThenWatch(t *testing.T) {
	errNoRoute := errors.New("no route")
	for _, tc := range []struct {
		name      string
		routeAt   time.Duration // the local condition holds from then on
		probeAt   time.Duration // the probe answers from then on
		budget    time.Duration
		wantCalls int32
		wantAt    time.Duration // the Watch call
		wantReady bool
		attempts  []time.Duration
		evals     int32 // of the local condition
	}{
		{
			name: "ready in the first round: no watchers", routeAt: 0, probeAt: 10 * time.Millisecond,
			budget: time.Second, wantCalls: 0, wantReady: true, attempts: ms(0, 10), evals: 1,
		},
		{
			// The schedule starts over at the call: 10ms, then backs off.
			name: "unmet after the first round", routeAt: 0, probeAt: time.Hour,
			budget: 100 * time.Millisecond, wantCalls: 1, wantAt: 20 * time.Millisecond,
			attempts: ms(0, 10, 20, 30, 50, 90), evals: 2,
		},
		{
			// The local condition is read again at the call, with no event.
			name: "local condition met during the first round", routeAt: 15 * time.Millisecond, probeAt: 0,
			budget: time.Second, wantCalls: 1, wantAt: 20 * time.Millisecond, wantReady: true,
			attempts: ms(0), evals: 2,
		},
		{
			name: "deadline within the first round", routeAt: time.Hour, probeAt: time.Hour,
			budget: 15 * time.Millisecond, wantCalls: 0, attempts: ms(0, 10), evals: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				t0 := time.Now()
				var evals atomic.Int32
				route := func(context.Context) error {
					evals.Add(1)
					if time.Since(t0) < tc.routeAt {
						return errNoRoute
					}
					return nil
				}
				rec := newRecorder(func(ctx context.Context, _ int) error {
					if time.Since(t0) < tc.probeAt {
						return hang(ctx)
					}
					return nil
				})
				w := newWatch(Wakeups{})
				ctx, cancel := context.WithTimeout(t.Context(), tc.budget)
				defer cancel()
				rep := Run(ctx, []Condition{
					{Name: "route to 10.0.0.5", Kind: Local, Check: route},
					{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check},
				}, Options{FirstRound: 20 * time.Millisecond, Watch: w.watch})
				if got := w.calls.Load(); got != tc.wantCalls {
					t.Fatalf("Watch called %d times, want %d", got, tc.wantCalls)
				}
				if tc.wantCalls > 0 && time.Duration(w.at.Load()) != tc.wantAt {
					t.Errorf("Watch called at %v, want %v", time.Duration(w.at.Load()), tc.wantAt)
				}
				if rep.Ready() != tc.wantReady {
					t.Errorf("Ready() = %v, want %v: %s", rep.Ready(), tc.wantReady, rep.Summary())
				}
				if got := rec.startTimes(); !slices.Equal(got, tc.attempts) {
					t.Errorf("attempts at %v, want %v", got, tc.attempts)
				}
				// One run, one report: attempts and checks of both rounds add up.
				if got := rep.Conditions[1].Attempts; got != len(tc.attempts) {
					t.Errorf("report: %d attempts, want %d", got, len(tc.attempts))
				}
				if got := evals.Load(); got != tc.evals || rep.Conditions[0].Attempts != int(tc.evals) {
					t.Errorf("local condition evaluated %d times, reported %d, want %d", got, rep.Conditions[0].Attempts, tc.evals)
				}
				if !rep.Start.Equal(t0) {
					t.Errorf("report starts %v after the run, want at its start", rep.Start.Sub(t0))
				}
			})
		})
	}
}

// TestWatchersWakeTheGate: what Watch returns wakes the gate as from the
// start, and After counts from the first round's start.
func TestWatchersWakeTheGate(t *testing.T) {
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
			time.Sleep(1005 * time.Millisecond) // between two scheduled attempts
			open.Store(true)
			events <- struct{}{}
		}()
		w := newWatch(Wakeups{NodeChanged: events, Notes: []string{"probing alone"}})
		rep := Run(t.Context(), []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
			Options{FirstRound: 20 * time.Millisecond, Watch: w.watch})
		if got := rep.Conditions[0].After; !rep.Ready() || got != 1005*time.Millisecond {
			t.Fatalf("ready=%v after %v, want ready at the event (1.005s)", rep.Ready(), got)
		}
		if !slices.Equal(rep.Notes, []string{"probing alone"}) {
			t.Errorf("Notes = %q, want Watch's", rep.Notes)
		}
		if !w.closed.Load() {
			t.Error("Close not called")
		}
	})
}

// TestWatchEnds: Watch's end stops the gate with its cause, and Close runs
// after every attempt has finished.
func TestWatchEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errGone := errors.New("the pod's netns was removed")
		rec := newRecorder(func(ctx context.Context, _ int) error { return hang(ctx) })
		w := newWatch(Wakeups{})
		w.running = rec.live.Load
		go func() {
			time.Sleep(300 * time.Millisecond)
			w.end(errGone)
		}()
		rep := Run(t.Context(), []Condition{{Name: "icmp://10.0.0.1", Kind: Active, Check: rec.check}},
			Options{FirstRound: 20 * time.Millisecond, Watch: w.watch})
		if !errors.Is(rep.Err, errGone) || rep.Waited != 300*time.Millisecond {
			t.Fatalf("Err %v after %v, want %v after 300ms", rep.Err, rep.Waited, errGone)
		}
		if !w.closed.Load() || w.atClose.Load() != 0 {
			t.Errorf("closed %v with %d attempts running, want closed with none", w.closed.Load(), w.atClose.Load())
		}
	})
}

func TestWatchFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errNetlink := errors.New("netlink socket: too many open files")
		rec := newRecorder(func(ctx context.Context, _ int) error { return hang(ctx) })
		w := newWatch(Wakeups{})
		w.err = errNetlink
		rep := Run(t.Context(), []Condition{{Name: "icmp://10.0.0.1", Kind: Active, Check: rec.check}},
			Options{FirstRound: 20 * time.Millisecond, Watch: w.watch})
		if !errors.Is(rep.Err, errNetlink) || rep.Waited != 20*time.Millisecond {
			t.Fatalf("Err %v after %v, want %v at the end of the first round", rep.Err, rep.Waited, errNetlink)
		}
		if rep.Ready() {
			t.Error("Ready() after Watch failed")
		}
	})
}

// TestFirstRoundIsUnshared: a probe is shared only once Watch gave it a
// Peer. Before, it probes at the full rate; after, as a follower whose
// budget is taken, it sends nothing.
func TestFirstRoundIsUnshared(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		peer := &fakePeer{}
		rec := newRecorder(func(ctx context.Context, _ int) error { return hang(ctx) })
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		Run(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
			Options{FirstRound: 20 * time.Millisecond, Watch: newWatch(Wakeups{Peers: []Peer{peer}}).watch})
		if got := rec.startTimes(); !slices.Equal(got, ms(0, 10)) {
			t.Errorf("attempts at %v, want the first round's (0, 10ms) only", got)
		}
		if asks, _ := peer.counts(); asks == 0 {
			t.Error("the probe never asked its Peer for the lead after Watch")
		}
	})
}
