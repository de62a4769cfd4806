package gate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
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
	endMu   sync.Mutex
	end     context.CancelCauseFunc // guarded by endMu
	closed  atomic.Bool
	running func() int32 // attempts running, read at Close
	atClose atomic.Int32
}

func newWatch(w Wakeups) *watchRecorder { return &watchRecorder{t0: time.Now(), w: w} }

func (r *watchRecorder) watch(_ context.Context, end context.CancelCauseFunc, unmet []bool) (Wakeups, error) {
	r.calls.Add(1)
	r.at.Store(int64(time.Since(r.t0)))
	r.endMu.Lock()
	r.end = end
	r.endMu.Unlock()
	w := r.w
	w.Close = func() {
		r.closed.Store(true)
		if r.running != nil {
			r.atClose.Store(r.running())
		}
	}
	return w, r.err
}

// stop calls the gate's end, from any goroutine.
func (r *watchRecorder) stop(cause error) {
	r.endMu.Lock()
	end := r.end
	r.endMu.Unlock()
	end(cause)
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
				rep := runGate(ctx, []Condition{
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
		rep := runGate(t.Context(), []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
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
			w.stop(errGone)
		}()
		rep := runGate(t.Context(), []Condition{{Name: "icmp://10.0.0.1", Kind: Active, Check: rec.check}},
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
		rep := runGate(t.Context(), []Condition{{Name: "icmp://10.0.0.1", Kind: Active, Check: rec.check}},
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
		runGate(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
			Options{FirstRound: 20 * time.Millisecond, Watch: newWatch(Wakeups{Peers: []Peer{peer}}).watch})
		if got := rec.startTimes(); !slices.Equal(got, ms(0, 10)) {
			t.Errorf("attempts at %v, want the first round's (0, 10ms) only", got)
		}
		if asks, _ := peer.counts(); asks == 0 {
			t.Error("the probe never asked its Peer for the lead after Watch")
		}
	})
}

// pollRecorder is a Wakeups.Poll that records when it was called and finds
// its cause at the call numbered endAt (from 1), through the Watch's end.
type pollRecorder struct {
	t0    time.Time
	w     *watchRecorder
	endAt int
	cause error
	mu    sync.Mutex
	calls []time.Duration
}

func (p *pollRecorder) poll() {
	p.mu.Lock()
	p.calls = append(p.calls, time.Since(p.t0))
	n := len(p.calls)
	p.mu.Unlock()
	if n == p.endAt {
		p.w.stop(p.cause)
	}
}

// TestPollRidesOnWakeups: Poll runs at the gate's first wake-up a
// PollEvery or more after the last, and wakes the gate on its own only when
// nothing else did within twice that; what it finds ends the gate.
func TestPollRidesOnWakeups(t *testing.T) {
	errGone := errors.New("the pod's netns was removed")
	never := func(context.Context) error { return errors.New("no route") }
	for _, tc := range []struct {
		name   string
		conds  func(rec *recorder) []Condition
		peer   Peer
		endAt  int
		polls  func(got, attempts []time.Duration) string // "" when right
		waited time.Duration                              // when the gate ended
	}{
		{
			// Watch at 20ms; attempts every 40ms: the first at or after
			// 1.02s and 2.02s (50ms + 40ms·k).
			name: "a lone probe: at its own attempts",
			conds: func(rec *recorder) []Condition {
				return []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}}
			},
			endAt: 2, waited: 2050 * time.Millisecond,
			polls: func(got, attempts []time.Duration) string {
				if !slices.Equal(got, ms(1050, 2050)) {
					return "want 1.05s and 2.05s"
				}
				return onlyAt(got, attempts)
			},
		},
		{
			// A follower's slow attempts come every SlowInterval (1s):
			// each one carries a poll, and no wake-up is its own.
			name: "a follower: at its slow attempts",
			conds: func(rec *recorder) []Condition {
				return []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}}
			},
			peer: slots(), endAt: 3, waited: 3020 * time.Millisecond,
			polls: func(got, attempts []time.Duration) string {
				if !slices.Equal(got, ms(1020, 2020, 3020)) {
					return "want 1.02s, 2.02s and 3.02s"
				}
				return onlyAt(got, attempts)
			},
		},
		{
			// Nothing scheduled: the gate wakes for Poll every 2s.
			name:  "only a local condition: every two PollEvery",
			conds: func(*recorder) []Condition { return []Condition{{Name: "route", Kind: Local, Check: never}} },
			endAt: 2, waited: 4020 * time.Millisecond,
			polls: func(got, _ []time.Duration) string {
				if !slices.Equal(got, ms(2020, 4020)) {
					return "want 2.02s and 4.02s"
				}
				return ""
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rec := newRecorder(hangN)
				w := newWatch(Wakeups{})
				p := &pollRecorder{t0: rec.t0, w: w, endAt: tc.endAt, cause: errGone}
				w.w.Poll, w.w.PollEvery = p.poll, time.Second
				if tc.peer != nil {
					w.w.Peers = []Peer{tc.peer}
				}
				rep := runGate(t.Context(), tc.conds(rec), Options{FirstRound: 20 * time.Millisecond, Watch: w.watch})
				if !errors.Is(rep.Err, errGone) || rep.Waited != tc.waited {
					t.Errorf("Err %v after %v, want %v after %v", rep.Err, rep.Waited, errGone, tc.waited)
				}
				if msg := tc.polls(p.calls, rec.startTimes()); msg != "" {
					t.Errorf("Poll called at %v: %s (attempts at %v)", p.calls, msg, rec.startTimes())
				}
			})
		})
	}
}

// onlyAt says which of polls came at no attempt: a wake-up for Poll alone.
func onlyAt(polls, attempts []time.Duration) string {
	for _, p := range polls {
		if !slices.Contains(attempts, p) {
			return fmt.Sprintf("the poll at %v woke the gate on its own", p)
		}
	}
	return ""
}

// slots is a follower whose every slow attempt gets a slot.
func slots() *fakePeer {
	f := &fakePeer{}
	f.slot.Store(true)
	return f
}

// TestWatchToldWhatIsUnmet: Watch learns which conditions the first round
// left unmet, so that only those get a Peer.
func TestWatchToldWhatIsUnmet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var got []bool
		watch := func(_ context.Context, _ context.CancelCauseFunc, unmet []bool) (Wakeups, error) {
			got = slices.Clone(unmet)
			return Wakeups{}, nil
		}
		ok := func(context.Context) error { return nil }
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		runGate(ctx, []Condition{
			{Name: "icmp://10.42.0.1", Kind: Active, Check: ok},
			{Name: "link eth0", Kind: Local, Check: ok},
			{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: hang},
		}, Options{FirstRound: 20 * time.Millisecond, Watch: watch})
		if want := []bool{false, false, true}; !slices.Equal(got, want) {
			t.Errorf("Watch told unmet = %v, want %v", got, want)
		}
	})
}

// fakeTimer is a Wakeups.Timer on synctest's clock that counts its use.
type fakeTimer struct {
	t      *time.Timer
	resets atomic.Int32
}

func (f *fakeTimer) C() <-chan time.Time   { return f.t.C }
func (f *fakeTimer) Reset(d time.Duration) { f.resets.Add(1); f.t.Reset(d) }
func (f *fakeTimer) Stop()                 { f.t.Stop() }

// TestWatchTimer: once Watch hands the gate a Timer, the gate sleeps on it
// and keeps its schedule; and an attempt's context has no deadline of its
// own (the gate closes it at AttemptTimeout itself), so a waiting process
// keeps no Go timer per attempt.
func TestWatchTimer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ft := &fakeTimer{t: time.NewTimer(time.Hour)}
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		whole, _ := ctx.Deadline()
		var deadlines atomic.Int32
		rec := newRecorder(func(actx context.Context, _ int) error {
			if d, ok := actx.Deadline(); ok && !d.Equal(whole) {
				deadlines.Add(1)
			}
			return hang(actx)
		})
		rep := runGate(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
			Options{FirstRound: 20 * time.Millisecond, Watch: newWatch(Wakeups{Timer: ft}).watch, AttemptTimeout: 100 * time.Millisecond})
		// After Watch at 20ms: 20, 30, 50, 90, then every 40ms to 490.
		want := ms(0, 10, 20, 30, 50, 90, 130, 170, 210, 250, 290, 330, 370, 410, 450, 490)
		if got := rec.startTimes(); !slices.Equal(got, want) {
			t.Errorf("attempts at %v, want %v", got, want)
		}
		if n := ft.resets.Load(); n < int32(len(want)-2) {
			t.Errorf("Watch's timer reset %d times, want one per wake-up at least: the gate slept on another", n)
		}
		if n := deadlines.Load(); n > 0 {
			t.Errorf("%d attempts had a context deadline of their own, want none (each is a Go timer left behind when the attempt is closed early)", n)
		}
		if c := rep.Conditions[0]; c.LastErr == nil || c.LastErr.Error() != "no answer within 100ms" {
			t.Errorf("LastErr %v, want the gate's own timeout: no answer within 100ms", c.LastErr)
		}
	})
}
