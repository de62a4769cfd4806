package fdtimer

import (
	"testing"
	"time"

	"github.com/netready/netready/internal/testns"
)

func newTimer(t *testing.T) *Timer {
	t.Helper()
	tm, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tm.Close() })
	return tm
}

// fired waits up to within for a firing and says when it came.
func fired(tm *Timer, within time.Duration) (time.Time, bool) {
	select {
	case at := <-tm.C():
		return at, true
	case <-time.After(within):
		return time.Time{}, false
	}
}

func TestFiresOnceAfterReset(t *testing.T) {
	tm := newTimer(t)
	start := time.Now()
	tm.Reset(30 * time.Millisecond)
	at, ok := fired(tm, 2*time.Second)
	if !ok {
		t.Fatal("no firing within 2s of Reset(30ms)")
	}
	if took := at.Sub(start); took < 30*time.Millisecond {
		t.Errorf("fired %v after Reset(30ms), before it was due", took)
	}
	if _, ok := fired(tm, 100*time.Millisecond); ok {
		t.Error("fired twice after one Reset: a one-shot timer")
	}
	tm.Reset(0)
	if _, ok := fired(tm, time.Second); !ok {
		t.Error("Reset(0) did not fire")
	}
}

func TestResetReplacesAndStopDisarms(t *testing.T) {
	tm := newTimer(t)
	start := time.Now()
	tm.Reset(30 * time.Millisecond)
	tm.Reset(300 * time.Millisecond)
	at, ok := fired(tm, 2*time.Second)
	if !ok {
		t.Fatal("no firing within 2s")
	}
	if took := at.Sub(start); took < 300*time.Millisecond {
		t.Errorf("fired %v after Reset(300ms) replaced Reset(30ms): the first still fired", took)
	}
	tm.Reset(30 * time.Millisecond)
	tm.Stop()
	if _, ok := fired(tm, 200*time.Millisecond); ok {
		t.Error("fired after Stop")
	}
	// Stop forgets the deadline: the same one armed again fires.
	tm.Reset(30 * time.Millisecond)
	if _, ok := fired(tm, 2*time.Second); !ok {
		t.Error("no firing after Stop and a new Reset")
	}
}

func TestCloseLeavesNothing(t *testing.T) {
	before := testns.OpenFDs(t)
	tm, err := New()
	if err != nil {
		t.Fatal(err)
	}
	tm.Reset(time.Hour)
	if got := testns.OpenFDs(t); got != before+1 {
		t.Errorf("%d descriptors open with a timer, want %d: one timerfd", got, before+1)
	}
	done := make(chan error)
	go func() { done <- tm.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return: the waiting goroutine did not end")
	}
	if got := testns.OpenFDs(t); got != before {
		t.Errorf("%d descriptors open after Close, want %d", got, before)
	}
}
