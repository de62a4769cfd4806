// Package podcheck runs the gate against a real pod: it turns a resolved
// spec and what the previous plugins set up into conditions read through
// netlink and probes sent from inside the pod's netns.
package podcheck

import (
	"context"
	"os"
	"slices"
	"time"

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

// Run opens the pod's netns and waits, within ctx, until every condition
// of spec holds. The error is for what prevents gating at all (a missing
// netns, podns.IsBadNetNS; a netlink or socket failure); unmet conditions
// are in the report.
func Run(ctx context.Context, spec config.Spec, pod Pod) (*gate.Report, error) {
	n, err := podns.Open(pod.NetNS)
	if err != nil {
		return nil, err
	}
	defer n.Close()
	conds, err := Conditions(spec, pod, n.View(), n)
	if err != nil {
		return nil, err
	}
	// Most pods find their network already working: the gate runs a quick
	// round first, and pays for watchers (three netlink sockets, and a
	// wake-up for every change on a busy node) and for sharing only if
	// something is unmet after it.
	var watchErr error
	report := gate.Run(ctx, conds, gate.Options{
		Interval: spec.Interval, MaxInterval: spec.MaxInterval, AttemptTimeout: spec.AttemptTimeout,
		FirstRound: quickRound,
		Watch: func(_ context.Context, end context.CancelCauseFunc) (gate.Wakeups, error) {
			w, err := watch(n, conds, end)
			watchErr = err
			return w, err
		},
	})
	if watchErr != nil {
		return nil, watchErr
	}
	return report, nil
}

// watch starts what a waiting gate needs: the wake-ups from the pod's and
// the node's netns, the sharing of its probes with the other ADDs on the
// node, and what ends the wait early. Each of those calls end with its
// cause; today one does: the pod's netns removed (podns.ErrRemoved).
func watch(n *podns.NetNS, conds []gate.Condition, end context.CancelCauseFunc) (gate.Wakeups, error) {
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

	// What ends the wait early, besides ctx.
	stops = append(stops, n.WatchGone(end))

	w := share(conds)
	stops = append(stops, w.Close)
	w.PodChanged, w.NodeChanged, w.Close = podChanged, nodeChanged, closeAll
	return w, nil
}

// RunDirEnv names another coordination directory than coord.DefaultDir:
// for tests, which run many simulated nodes on one host.
const RunDirEnv = "NETREADY_RUN_DIR"

// share seats every active condition at its target's table under
// /run/netready, so that the ADDs waiting on one target on this node probe
// it once between them. What cannot be shared is probed alone, as without
// coordination, and the notes say why (for the log).
func share(conds []gate.Condition) gate.Wakeups {
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
		if c.Kind != gate.Active {
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
