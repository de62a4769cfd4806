// Package podcheck runs the gate against a real pod: it turns a resolved
// spec and what the previous plugins set up into conditions read through
// netlink and probes sent from inside the pod's netns.
package podcheck

import (
	"context"
	"os"
	"slices"
	"time"

	"github.com/netready/netready/internal/fdtimer"
	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/coord"
	"github.com/netready/netready/pkg/gate"
	"github.com/netready/netready/pkg/netstate"
	"github.com/netready/netready/pkg/podns"
)

// quickRound is how long the first, watcher-less round may take: long
// enough for a gateway and a target a few milliseconds away to answer, short
// enough that a path opening meanwhile is seen almost as soon.
const quickRound = 20 * time.Millisecond

// exitGrace is how long RunThenExit leaves what the wait started open for
// the process's exit to close (gate.Options.DetachDelay). The plugin exits
// within milliseconds of its answer, or within a few hundred when a whole
// node's waiting ADDs answer at once on two CPUs.
var exitGrace = time.Second

// removalCheckEvery is how often a waiting gate looks whether the pod's
// netns is still there (podns.Removed), riding on the wake-ups it makes
// anyway (gate.Wakeups.Poll): it notices within one to two of these. At
// 200 ms on a ticker of its own it was the most frequent wake-up of an ADD
// that follows another's probing, and a removed sandbox is not wanted back
// sooner.
const removalCheckEvery = time.Second

// An End ends a waiting gate early, for a cause outside the pod's netns
// (the runtime's signal, the pod deleted in the API server): it calls end
// with its cause, and returns what stops it. Run starts it only when the
// first round left conditions unmet, so a ready pod pays for none.
type End func(ctx context.Context, end context.CancelCauseFunc) (stop func())

// OnWait is an End that never ends the wait: it calls f once, on the
// gate's goroutine, when the wait begins. For work worth doing only when
// the pod waits (the plugin readies its answer then).
func OnWait(f func()) End {
	return func(context.Context, context.CancelCauseFunc) func() {
		f()
		return func() {}
	}
}

// Run opens the pod's netns and waits in it (RunIn). The error is for what
// prevents gating at all (a missing netns, podns.IsBadNetNS; a netlink or
// socket failure); unmet conditions are in the report.
func Run(ctx context.Context, spec config.Spec, pod Pod, ends ...End) (*gate.Report, error) {
	return openAndRun(ctx, spec, pod, false, ends)
}

// RunThenExit is Run for a process that exits as soon as it has the report
// (the plugin's ADD): what the wait started, the pod's netns thread
// included, is closed on a goroutine of its own (gate.Options.Detach)
// once exitGrace has passed, which the process's exit usually forestalls,
// closing it all at once.
func RunThenExit(ctx context.Context, spec config.Spec, pod Pod, ends ...End) (*gate.Report, error) {
	return openAndRun(ctx, spec, pod, true, ends)
}

func openAndRun(ctx context.Context, spec config.Spec, pod Pod, detach bool, ends []End) (*gate.Report, error) {
	n, err := podns.Open(pod.NetNS)
	if err != nil {
		return nil, err
	}
	report, err := runIn(ctx, n, spec, pod, detach, ends)
	if detach && report != nil {
		go func() {
			<-report.Closed
			n.Close()
		}()
	} else {
		n.Close()
	}
	if err != nil {
		return nil, err
	}
	return report, nil
}

// RunIn waits, within ctx, until every condition of spec holds in n, the
// pod's netns, or one of ends ends the wait (Report.Err holds its cause).
func RunIn(ctx context.Context, n *podns.NetNS, spec config.Spec, pod Pod, ends ...End) (*gate.Report, error) {
	report, err := runIn(ctx, n, spec, pod, false, ends)
	if err != nil {
		return nil, err
	}
	return report, nil
}

// runIn is RunIn. It returns the gate's report, when the gate ran, with
// its error: with detach the caller must not close n before
// report.Closed.
func runIn(ctx context.Context, n *podns.NetNS, spec config.Spec, pod Pod, detach bool, ends []End) (*gate.Report, error) {
	conds, err := Conditions(spec, pod, n.View(), n)
	if err != nil {
		return nil, err
	}
	// Most pods find their network already working: the gate runs a quick
	// round first, and pays for watchers (three netlink sockets, and a
	// wake-up for every change on a busy node), for sharing and for what
	// ends a wait early only if something is unmet after it.
	var watchErr error
	opt := gate.Options{
		Interval: spec.Interval, MaxInterval: spec.MaxInterval, AttemptTimeout: spec.AttemptTimeout,
		FirstRound: quickRound,
		Watch: func(ctx context.Context, end context.CancelCauseFunc, unmet []bool) (gate.Wakeups, error) {
			w, err := watch(ctx, n, conds, unmet, end, ends)
			watchErr = err
			return w, err
		},
		Detach: detach,
	}
	if detach {
		opt.DetachDelay = exitGrace
	}
	report := gate.Run(ctx, conds, opt)
	return report, watchErr
}

// watch starts what a waiting gate needs: the wake-ups from the pod's and
// the node's netns, the sharing of its probes with the other ADDs on the
// node, and what ends the wait early, each calling end with its cause: the
// pod's netns removed (podns.ErrRemoved), and the caller's ends.
func watch(ctx context.Context, n *podns.NetNS, conds []gate.Condition, unmet []bool, end context.CancelCauseFunc, ends []End) (gate.Wakeups, error) {
	var stops []func()
	closeAll := func() {
		for _, stop := range slices.Backward(stops) {
			stop()
		}
	}
	podChanged := make(chan struct{}, 1)
	pw, err := n.Watch(podChanged)
	if err != nil {
		return gate.Wakeups{}, err
	}
	stops = append(stops, pw.Close)
	nodeChanged := make(chan struct{}, 1)
	nw, err := netstate.WatchNode(nodeChanged)
	if err != nil {
		closeAll()
		return gate.Wakeups{}, err
	}
	stops = append(stops, nw.Close)

	for _, e := range ends {
		stops = append(stops, e(ctx, end))
	}

	w := share(conds, unmet)
	stops = append(stops, w.Close)
	// A timerfd to sleep on between attempts, which wakes this process once
	// per attempt where a Go timer wakes it twice (internal/fdtimer). Without
	// one the gate keeps its Go timer: more CPU, the same schedule.
	if t, err := fdtimer.New(); err == nil {
		w.Timer = t
		stops = append(stops, func() { t.Close() })
	} else {
		w.Notes = append(w.Notes, "sleeping on a Go timer: "+err.Error())
	}
	w.PodChanged, w.NodeChanged, w.Close = podChanged, nodeChanged, closeAll
	// An error leaves the watcher as it was: a follower woken by node
	// events costs CPU, not correctness.
	w.NodeWanted = func(on bool) { nw.Mute(!on) }
	w.Poll = func() {
		if err := n.Removed(); err != nil {
			end(err)
		}
	}
	w.PollEvery = removalCheckEvery
	return w, nil
}

// RunDirEnv names another coordination directory than coord.DefaultDir:
// for tests, which run many simulated nodes on one host.
const RunDirEnv = "NETREADY_RUN_DIR"

// share seats every unmet active condition at its target's table under
// /run/netready, so that the ADDs waiting on one target on this node probe
// it once between them. What cannot be shared is probed alone, as without
// coordination, and the notes say why (for the log). A target that already
// answered this ADD (its gateway, often) gets no seat: the seat's waiter
// would only wake it for the others' answers.
func share(conds []gate.Condition, unmet []bool) gate.Wakeups {
	dir := os.Getenv(RunDirEnv)
	if dir == "" {
		dir = coord.DefaultDir
	}
	node, err := coord.Open(dir)
	if err != nil {
		return gate.Wakeups{Notes: []string{"probing alone, not sharing with other ADDs: " + err.Error()}, Close: func() {}}
	}
	w := gate.Wakeups{Peers: make([]gate.Peer, len(conds)), PeerAnswered: node.Answered(), Close: func() { node.Close() }}
	for i, c := range conds {
		if c.Kind != gate.Active || !unmet[i] {
			continue
		}
		t, err := node.Target(c.Name)
		if err != nil {
			w.Notes = append(w.Notes, c.Name+": probing alone, not sharing with other ADDs: "+err.Error())
			continue
		}
		w.Peers[i] = t
	}
	return w
}
