package podcheck

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/gate"
	"github.com/netready/netready/pkg/netstate"
	"github.com/netready/netready/pkg/probe"
)

// View is what the local conditions read of the pod's netns
// (a netstate.NetNS; a fake in tests).
type View interface {
	LinkUp(name string) error
	AddrReady(link string, addr netip.Addr) error
	DefaultRoute(v4 bool) error
	RouteTo(dst netip.Addr) error
}

// Conditions lists what must hold in the order an operator reads them: the
// local ones, read through view (links, addresses, default routes, a route
// to each probe target), then the active ones, sent through sockets (the
// gateway, then each probe). Which conditions a pod gets is decided here
// and nowhere else; nothing is read or sent until the gate runs them.
func Conditions(spec config.Spec, pod Pod, view View, sockets probe.Sockets) ([]gate.Condition, error) {
	conds := linkConditions(pod, view)
	if spec.DefaultRoute {
		conds = append(conds, defaultRouteConditions(pod, view)...)
	}
	conds = append(conds, routeConditions(spec.Probes, view)...)
	active, err := activeConditions(spec, pod, sockets)
	if err != nil {
		return nil, err
	}
	return append(conds, active...), nil
}

func local(name string, check func() error) gate.Condition {
	return gate.Condition{Name: name, Kind: gate.Local, Check: func(context.Context) error { return check() }}
}

// linkConditions: each sandbox link up, each of its addresses usable. What
// the previous plugin made cannot come back once gone, nor can an address
// that failed duplicate address detection: those end the wait at once.
func linkConditions(pod Pod, view View) []gate.Condition {
	var conds []gate.Condition
	for _, l := range pod.Links {
		conds = append(conds, local("link "+l.Name, func() error {
			err := view.LinkUp(l.Name)
			if errors.Is(err, netstate.ErrNoLink) {
				return gate.Permanent(errors.New("gone (was the pod deleted?)"))
			}
			return err
		}))
		for _, a := range l.Addrs {
			conds = append(conds, local(fmt.Sprintf("address %s on %s", a, l.Name), func() error {
				err := view.AddrReady(l.Name, a)
				if errors.Is(err, netstate.ErrDADFailed) {
					return gate.Permanent(err)
				}
				return err
			}))
		}
	}
	return conds
}

// defaultRouteConditions: a default route for each family the pod has an
// address in.
func defaultRouteConditions(pod Pod, view View) []gate.Condition {
	var conds []gate.Condition
	v4, v6 := pod.families()
	if v4 {
		conds = append(conds, local("IPv4 default route", func() error { return view.DefaultRoute(true) }))
	}
	if v6 {
		conds = append(conds, local("IPv6 default route", func() error { return view.DefaultRoute(false) }))
	}
	return conds
}

// routeConditions: a route to each probe target, once per address. It is
// local, so it names a missing or blackhole route at once, where the probe
// alone would only time out.
func routeConditions(probes []config.Probe, view View) []gate.Condition {
	var conds []gate.Condition
	routed := map[netip.Addr]bool{}
	for _, p := range probes {
		if !routed[p.Addr] {
			routed[p.Addr] = true
			conds = append(conds, local("route to "+p.Addr.String(), func() error { return view.RouteTo(p.Addr) }))
		}
	}
	return conds
}

// activeConditions: an echo from each gateway (when spec.Gateway), then
// each probe.
func activeConditions(spec config.Spec, pod Pod, sockets probe.Sockets) ([]gate.Condition, error) {
	var conds []gate.Condition
	add := func(name string, p config.Probe) error {
		pr, err := probe.New(p, sockets)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		c := gate.Condition{Name: name, Kind: gate.Active, Check: pr.Attempt}
		if st, ok := pr.(probe.Starter); ok {
			c.Start = func(ready func()) (gate.Attempt, error) {
				a, err := st.Start(ready)
				if a == nil {
					return nil, err // not a nil *Pending in a non-nil interface
				}
				return a, nil
			}
			c.Close = st.Close
		}
		conds = append(conds, c)
		return nil
	}
	if spec.Gateway {
		for _, gw := range pod.Gateways {
			if err := add("gateway "+gw.String(), gatewayProbe(gw)); err != nil {
				return nil, err
			}
		}
	}
	for _, p := range spec.Probes {
		if err := add(p.URL, p); err != nil {
			return nil, err
		}
	}
	return conds, nil
}

// gatewayProbe is the ICMP echo probe of a gateway.
func gatewayProbe(gw netip.Addr) config.Probe {
	host := gw.String()
	if gw.Is6() {
		host = "[" + host + "]"
	}
	return config.Probe{Scheme: config.ICMP, Addr: gw, URL: "icmp://" + host}
}
