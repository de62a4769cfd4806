package gate

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// fakePeer is a Peer whose answers the test sets: who leads, whether the
// followers' budget has a slot, and whether its target was not the one
// whose answer woke the gate (quiet).
type fakePeer struct {
	lead     atomic.Bool
	slot     atomic.Bool
	quiet    atomic.Bool
	mu       sync.Mutex
	leadAsks int // guarded by mu
	answered int // guarded by mu
}

func (f *fakePeer) Lead() bool {
	f.mu.Lock()
	f.leadAsks++
	f.mu.Unlock()
	return f.lead.Load()
}
func (f *fakePeer) Slot() bool  { return f.slot.Load() }
func (f *fakePeer) Woken() bool { return !f.quiet.Load() }
func (f *fakePeer) Answered() {
	f.mu.Lock()
	f.answered++
	f.mu.Unlock()
}

func (f *fakePeer) counts() (asks, answered int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.leadAsks, f.answered
}

func refused(context.Context, int) error { return errRefused }

func TestSharedProbe(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lead   bool
		slot   bool
		budget time.Duration
		want   []time.Duration
	}{
		// The leader probes at the full schedule, as an unshared probe.
		{"leader", true, false, 200 * time.Millisecond, ms(0, 10, 30, 70, 110, 150, 190)},
		// A follower with slots probes once per slow interval.
		{"follower with slots", false, true, 3500 * time.Millisecond, ms(0, 1000, 2000, 3000)},
		// A follower whose budget is taken by the others sends nothing.
		{"follower without slots", false, false, 3500 * time.Millisecond, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				peer := &fakePeer{}
				peer.lead.Store(tc.lead)
				peer.slot.Store(tc.slot)
				rec := newRecorder(refused)
				ctx, cancel := context.WithTimeout(t.Context(), tc.budget)
				defer cancel()
				rep := runGate(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
					Options{Watch: from(Wakeups{Peers: []Peer{peer}})})
				if got := rec.startTimes(); !slices.Equal(got, tc.want) {
					t.Errorf("attempts at %v, want %v", got, tc.want)
				}
				if rep.Ready() {
					t.Errorf("ready, want a timeout")
				}
				if asks, _ := peer.counts(); tc.lead && asks != 1 {
					t.Errorf("Lead asked %d times, want once: the leader keeps the lead", asks)
				}
			})
		})
	}
}

func TestFollowerTakesOverWithinOneSlowInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		peer := &fakePeer{}
		go func() {
			time.Sleep(2500 * time.Millisecond) // the leader is killed: its flock is released
			peer.lead.Store(true)
		}()
		rec := newRecorder(refused)
		ctx, cancel := context.WithTimeout(t.Context(), 3600*time.Millisecond)
		defer cancel()
		runGate(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
			Options{Watch: from(Wakeups{Peers: []Peer{peer}})})
		// No slot before: silent, asking again at random times within a
		// slow interval; from the first ask after 2.5 s, the full schedule.
		got := rec.startTimes()
		if len(got) < 4 || got[0] <= 2500*time.Millisecond || got[0] > 3500*time.Millisecond {
			t.Fatalf("attempts at %v, want the first within a slow interval of 2.5s", got)
		}
		for i, d := range ms(0, 10, 30, 70) {
			if got[i]-got[0] != d {
				t.Errorf("attempts at %v, want the full schedule from %v", got, got[0])
				break
			}
		}
	})
}

func TestFollowerWokenProvesItsOwnPath(t *testing.T) {
	for _, tc := range []struct {
		name      string
		open      bool // this pod's own path is open when the leader's answer arrives
		wantReady bool
	}{
		{"own path open", true, true},
		// Another namespace's egress policy: the leader's answer is not ours.
		{"own path closed", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				peer := &fakePeer{}
				answered := make(chan struct{}, 1)
				t0 := time.Now()
				rec := newRecorder(func(context.Context, int) error {
					if tc.open && time.Since(t0) >= 1500*time.Millisecond {
						return nil
					}
					return errRefused
				})
				go func() {
					time.Sleep(1500 * time.Millisecond)
					answered <- struct{}{}
				}()
				ctx, cancel := context.WithTimeout(t.Context(), 1900*time.Millisecond)
				defer cancel()
				rep := runGate(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
					Options{Watch: from(Wakeups{Peers: []Peer{peer}, PeerAnswered: answered})})
				if got, want := rec.startTimes(), ms(1500); !slices.Equal(got, want) {
					t.Errorf("attempts at %v, want one at once on the leader's answer", got)
				}
				if rep.Ready() != tc.wantReady {
					t.Fatalf("Ready=%v, want %v", rep.Ready(), tc.wantReady)
				}
				// Woken by an announced answer, its own is not announced again.
				if _, answers := peer.counts(); answers != 0 {
					t.Errorf("Answered %d times; a woken follower's answer must not wake the others again", answers)
				}
			})
		})
	}
}

// An ADD waits on two shared targets, and the answer of one wakes it: only
// that target's probe tries (a gateway that answered says nothing of the
// database behind it).
func TestPeerAnsweredTriesOnlyTheTargetThatAnswered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gw, db := &fakePeer{}, &fakePeer{}
		db.quiet.Store(true)
		answered := make(chan struct{}, 1)
		gwRec, dbRec := newRecorder(refused), newRecorder(refused)
		go func() {
			time.Sleep(500 * time.Millisecond)
			answered <- struct{}{}
		}()
		ctx, cancel := context.WithTimeout(t.Context(), 800*time.Millisecond)
		defer cancel()
		runGate(ctx, []Condition{
			{Name: "gateway 10.42.0.1", Kind: Active, Check: gwRec.check},
			{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: dbRec.check},
		}, Options{Watch: from(Wakeups{Peers: []Peer{gw, db}, PeerAnswered: answered})})
		if got, want := gwRec.startTimes(), ms(500); !slices.Equal(got, want) {
			t.Errorf("gateway attempts at %v, want one at once on its answer", got)
		}
		if got := dbRec.startTimes(); len(got) != 0 {
			t.Errorf("database attempts at %v, want none: only the gateway answered", got)
		}
	})
}

// A follower whose own attempt (a slot) is answered tells the others: the
// leader's path may stay closed while theirs opened.
func TestFollowerAnswerTellsPeer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		peer := &fakePeer{}
		peer.slot.Store(true)
		t0 := time.Now()
		rec := newRecorder(func(context.Context, int) error {
			if time.Since(t0) >= 500*time.Millisecond {
				return nil
			}
			return errRefused
		})
		rep := runGate(t.Context(), []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
			Options{Watch: from(Wakeups{Peers: []Peer{peer}})})
		if !rep.Ready() || rep.Conditions[0].After != time.Second {
			t.Fatalf("Ready=%v after %v, want ready at its second slow attempt (1s)", rep.Ready(), rep.Conditions[0].After)
		}
		if _, answers := peer.counts(); answers != 1 {
			t.Errorf("Answered %d times, want 1", answers)
		}
	})
}

func TestLeaderAnswerTellsPeer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		peer := &fakePeer{}
		peer.lead.Store(true)
		t0 := time.Now()
		rec := newRecorder(func(context.Context, int) error {
			if time.Since(t0) >= 25*time.Millisecond {
				return nil
			}
			return errRefused
		})
		rep := runGate(t.Context(), []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
			Options{Watch: from(Wakeups{Peers: []Peer{peer}})})
		if !rep.Ready() || rep.Conditions[0].After != 30*time.Millisecond {
			t.Fatalf("Ready=%v after %v, want ready at 30ms", rep.Ready(), rep.Conditions[0].After)
		}
		if _, answers := peer.counts(); answers != 1 {
			t.Errorf("Answered %d times, want 1", answers)
		}
	})
}

func TestEventsWakeFollowerKeepingItsSlowTick(t *testing.T) {
	for _, tc := range []struct {
		name string
		node bool
		slot bool
		want []time.Duration
	}{
		{"node event, slot free", true, true, ms(0, 1000, 1200, 2000)},
		// Every ADD on the node sees a node event: followers need a slot.
		{"node event, no slot", true, false, nil},
		// A pod's own attempts make neighbour events in its netns: a
		// follower that tried on each would keep itself busy.
		{"pod event, slot free", false, true, ms(0, 1000, 1200, 2000)},
		{"pod event, no slot", false, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				peer := &fakePeer{}
				peer.slot.Store(tc.slot)
				events := make(chan struct{}, 1)
				go func() {
					time.Sleep(1200 * time.Millisecond)
					events <- struct{}{}
				}()
				rec := newRecorder(refused)
				ctx, cancel := context.WithTimeout(t.Context(), 2500*time.Millisecond)
				defer cancel()
				w := Wakeups{Peers: []Peer{peer}}
				if tc.node {
					w.NodeChanged = events
				} else {
					w.PodChanged = events
				}
				opts := Options{Watch: from(w)}
				runGate(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}}, opts)
				if got := rec.startTimes(); !slices.Equal(got, tc.want) {
					t.Errorf("attempts at %v, want %v", got, tc.want)
				}
			})
		})
	}
}

func TestFollowerAttemptEndsBeforeSYNRetransmission(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		peer := &fakePeer{}
		peer.slot.Store(true)
		var mu sync.Mutex
		var lived []time.Duration
		rec := newRecorder(func(ctx context.Context, _ int) error {
			t0 := time.Now()
			<-ctx.Done()
			mu.Lock()
			lived = append(lived, time.Since(t0))
			mu.Unlock()
			return ctx.Err()
		})
		ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
		defer cancel()
		runGate(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: rec.check}},
			Options{Watch: from(Wakeups{Peers: []Peer{peer}}), AttemptTimeout: 2 * time.Second})
		mu.Lock()
		defer mu.Unlock()
		if len(lived) == 0 || lived[0] != followerAttemptTimeout {
			t.Errorf("a follower's attempts lived %v, want the first closed after %v", lived, followerAttemptTimeout)
		}
	})
}

// The node's events are wanted only while this ADD probes alone or leads: a
// follower's leader follows them. A follower that takes the lead wants them
// again; an unshared probe always does.
func TestNodeWantedOnlyWhileLeading(t *testing.T) {
	type call struct {
		at   time.Duration
		want bool
	}
	for _, tc := range []struct {
		name   string
		shared bool
		want   []call
	}{
		{"follower, then leader", true, []call{{0, false}, {1000 * time.Millisecond, true}}},
		{"probed alone", false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				peer := &fakePeer{}
				peer.slot.Store(true) // a slow tick of exactly 1s
				t0 := time.Now()
				go func() {
					time.Sleep(700 * time.Millisecond) // the leader left
					peer.lead.Store(true)
				}()
				var calls []call
				w := Wakeups{NodeWanted: func(on bool) { calls = append(calls, call{time.Since(t0), on}) }}
				if tc.shared {
					w.Peers = []Peer{peer}
				}
				ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
				defer cancel()
				runGate(ctx, []Condition{{Name: "tcp://10.0.0.5:5432", Kind: Active, Check: newRecorder(refused).check}},
					Options{Watch: from(w)})
				if !slices.Equal(calls, tc.want) {
					t.Errorf("NodeWanted calls %v, want %v", calls, tc.want)
				}
			})
		})
	}
}
