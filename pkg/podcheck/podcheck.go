// Package podcheck runs the gate against a real pod: it turns a resolved
// spec and what the previous plugins set up into conditions read through
// netlink and probes sent from inside the pod's netns.
package podcheck

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/coord"
	"github.com/netready/netready/pkg/gate"
	"github.com/netready/netready/pkg/netstate"
	"github.com/netready/netready/pkg/probe"
)

// Pod is what the previous plugins in the chain set up for the pod.
type Pod struct {
	NetNS    string       // path of the pod's netns
	Links    []Link       // the sandbox interfaces
	Gateways []netip.Addr // gateways of the pod's addresses
}

// Link is one sandbox interface and its addresses.
type Link struct {
	Name  string
	Addrs []netip.Addr
}

// families reports which address families the pod has addresses in.
func (p Pod) families() (v4, v6 bool) {
	for _, l := range p.Links {
		for _, a := range l.Addrs {
			if a.Is4() {
				v4 = true
			} else {
				v6 = true
			}
		}
	}
	return v4, v6
}

// quickRound is how long the first, watcher-less round may take: long
// enough for a gateway and a target a few milliseconds away to answer, short
// enough that a path opening meanwhile is seen almost as soon.
const quickRound = 20 * time.Millisecond

// Run opens the pod's netns and waits, within ctx, until every condition
// of spec holds. The error is for what prevents gating at all (a missing
// netns); unmet conditions are in the report.
func Run(ctx context.Context, spec config.Spec, pod Pod) (*gate.Report, error) {
	// probe.OpenNetNS first: it tells a missing netns from a file that is
	// not a netns, in words an operator can act on.
	sockets, err := probe.OpenNetNS(pod.NetNS)
	if err != nil {
		return nil, err
	}
	defer sockets.Close()
	view, err := netstate.Open(pod.NetNS)
	if err != nil {
		return nil, err
	}
	defer view.Close()
	conds, err := Conditions(spec, pod, view, sockets)
	if err != nil {
		return nil, err
	}
	opts := gate.Options{Interval: spec.Interval, MaxInterval: spec.MaxInterval, AttemptTimeout: spec.AttemptTimeout}

	// Most pods find their network already working: one quick round first,
	// before paying for watchers (three netlink sockets, and a wake-up for
	// every change on a busy node). If anything is unmet, the full gate
	// below starts over with its watchers in place, so no change is missed.
	quick, cancelQuick := context.WithTimeout(ctx, quickRound)
	rep := gate.Run(quick, conds, opts)
	cancelQuick()
	if rep.Ready() || rep.Err != nil {
		return rep, nil
	}

	// Watch before the gate's first evaluation, so no change falls in between.
	podChanged := make(chan struct{}, 1)
	pw, err := netstate.WatchNetNS(pod.NetNS, podChanged)
	if err != nil {
		return nil, err
	}
	defer pw.Close()
	nodeChanged := make(chan struct{}, 1)
	nw, err := netstate.WatchNode(nodeChanged)
	if err != nil {
		return nil, err
	}
	defer nw.Close()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop, err := watchRemoval(pod.NetNS, cancel)
	if err != nil {
		return nil, err
	}
	defer stop()
	opts.PodChanged, opts.NodeChanged = podChanged, nodeChanged
	notes, unshare := share(&opts, conds)
	defer unshare()
	full := merge(rep, gate.Run(ctx, conds, opts))
	full.Notes = append(full.Notes, notes...)
	return full, nil
}

// RunDirEnv names another coordination directory than coord.DefaultDir:
// for tests, which run many simulated nodes on one host.
const RunDirEnv = "NETREADY_RUN_DIR"

// share seats every active condition at its target's table under
// /run/netready, so that the ADDs waiting on one target on this node probe
// it once between them. What cannot be shared is probed alone, as without
// coordination, and the returned notes say why (for the log).
func share(opts *gate.Options, conds []gate.Condition) (notes []string, closeFn func()) {
	dir := os.Getenv(RunDirEnv)
	if dir == "" {
		dir = coord.DefaultDir
	}
	node, err := coord.Open(dir)
	if err != nil {
		return []string{"probing alone, not sharing with other ADDs: " + err.Error()}, func() {}
	}
	opts.Peers = make([]gate.Peer, len(conds))
	for i, c := range conds {
		if c.Kind != gate.Active {
			continue
		}
		t, err := node.Target(c.Name)
		if err != nil {
			notes = append(notes, c.Name+": probing alone, not sharing with other ADDs: "+err.Error())
			continue
		}
		opts.Peers[i] = t
	}
	opts.PeerAnswered = node.Answered()
	return notes, func() { node.Close() }
}

// merge reports the quick round and the full gate as one run: times count
// from the quick round's start, attempts add up, and a condition that held
// in both rounds held from when it first did.
func merge(quick, full *gate.Report) *gate.Report {
	shift := full.Start.Sub(quick.Start)
	full.Start, full.Waited = quick.Start, full.Waited+shift
	for i := range full.Conditions {
		c, q := &full.Conditions[i], quick.Conditions[i]
		c.Attempts += q.Attempts
		switch {
		case c.Ready && q.Ready:
			c.After = q.After
		case c.Ready:
			c.After += shift
		}
		if c.LastErr == nil && !c.Ready {
			c.LastErr = q.LastErr
		}
	}
	return full
}

// Conditions lists what must hold in the order an operator reads them:
// the local ones (links, addresses, default routes, a route to each probe
// target), then the active ones (the gateway, then each probe).
func Conditions(spec config.Spec, pod Pod, view *netstate.NetNS, sockets probe.Sockets) ([]gate.Condition, error) {
	var conds []gate.Condition
	local := func(name string, check func() error) {
		conds = append(conds, gate.Condition{Name: name, Kind: gate.Local, Check: func(context.Context) error { return check() }})
	}
	for _, l := range pod.Links {
		local("link "+l.Name, func() error {
			err := view.LinkUp(l.Name)
			if errors.Is(err, netstate.ErrNoLink) {
				// The previous plugin made it: gone means the pod was torn down.
				return gate.Permanent(errors.New("gone (was the pod deleted?)"))
			}
			return err
		})
		for _, a := range l.Addrs {
			local(fmt.Sprintf("address %s on %s", a, l.Name), func() error {
				err := view.AddrReady(l.Name, a)
				if errors.Is(err, netstate.ErrDADFailed) {
					return gate.Permanent(err)
				}
				return err
			})
		}
	}
	if spec.DefaultRoute {
		v4, v6 := pod.families()
		if v4 {
			local("IPv4 default route", func() error { return view.DefaultRoute(true) })
		}
		if v6 {
			local("IPv6 default route", func() error { return view.DefaultRoute(false) })
		}
	}

	var active []gate.Condition
	addProbe := func(name string, p config.Probe) error {
		pr, err := probe.New(p, sockets)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		active = append(active, gate.Condition{Name: name, Kind: gate.Active, Check: pr.Attempt})
		return nil
	}
	if spec.Gateway {
		for _, gw := range pod.Gateways {
			host := gw.String()
			if gw.Is6() {
				host = "[" + host + "]"
			}
			p := config.Probe{Scheme: config.ICMP, Addr: gw, URL: "icmp://" + host}
			if err := addProbe("gateway "+gw.String(), p); err != nil {
				return nil, err
			}
		}
	}
	routed := map[netip.Addr]bool{}
	for _, p := range spec.Probes {
		if !routed[p.Addr] {
			routed[p.Addr] = true
			local("route to "+p.Addr.String(), func() error { return view.RouteTo(p.Addr) })
		}
		if err := addProbe(p.URL, p); err != nil {
			return nil, err
		}
	}
	return append(conds, active...), nil
}
