// Package netstate reads a network namespace's links, addresses and routes
// through netlink, and reports when they (or the node's nftables ruleset)
// change.
package netstate

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NetNS is a netlink view of one network namespace. Its netlink socket was
// created inside that namespace, so queries need no thread switching.
type NetNS struct {
	h netlinksafe.Handle
}

// OpenHere returns a view of the calling thread's netns: the caller has
// locked its goroutine to a thread in the namespace to view. The view's
// netlink socket belongs to that namespace from then on, whichever thread
// uses it. (podns.Open is how netready opens a pod's netns.)
//
// It is made on a thread already inside rather than with netlink's
// NewHandleAt, which enters the namespace and returns to the thread's own
// by opening /proc/PID/task/TID/ns/net (see internal/threadns for what
// that lookup costs).
func OpenHere() (*NetNS, error) {
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return &NetNS{h: h}, nil
}

// Close releases the netlink socket.
func (n *NetNS) Close() { n.h.Close() }

// The errors say what is wrong, not with what: the gate shows them after
// the condition's name ("link eth0: no carrier (operstate down)").

// ErrNoLink is returned for a link that does not exist.
var ErrNoLink = errors.New("no such link")

// LinkUp reports nil when the link exists, is administratively up and has
// carrier (a veth whose peer is down is not).
func (n *NetNS) LinkUp(name string) error {
	l, err := n.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return ErrNoLink
		}
		return err
	}
	a := l.Attrs()
	if a.Flags&net.FlagUp == 0 {
		return errors.New("administratively down")
	}
	// Loopback and some virtual links report "unknown": they carry traffic.
	if a.OperState != netlink.OperUp && a.OperState != netlink.OperUnknown {
		return fmt.Errorf("no carrier (operstate %s)", a.OperState)
	}
	return nil
}

// ErrDADFailed is returned for an IPv6 address that duplicate address
// detection rejected: the kernel will never use it.
var ErrDADFailed = errors.New("duplicate address detection failed")

// AddrReady reports nil when addr is on link name and usable: for IPv6 that
// means duplicate address detection is over (no longer tentative).
func (n *NetNS) AddrReady(name string, addr netip.Addr) error {
	l, err := n.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, ErrNoLink)
	}
	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	var addrs []netlink.Addr
	err = retryDump(func() (err error) { addrs, err = n.h.AddrList(l, family); return err })
	if err != nil {
		return err
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Unmap() != addr {
			continue
		}
		switch {
		case a.Flags&unix.IFA_F_DADFAILED != 0:
			return ErrDADFailed
		case a.Flags&unix.IFA_F_TENTATIVE != 0:
			return errors.New("tentative (duplicate address detection in progress)")
		}
		return nil
	}
	return errors.New("not on the link")
}

// DefaultRoute reports nil when the main table has a usable default route
// for the family of v4 (true: IPv4, false: IPv6).
func (n *NetNS) DefaultRoute(v4 bool) error {
	family, fam := netlink.FAMILY_V6, "IPv6"
	if v4 {
		family, fam = netlink.FAMILY_V4, "IPv4"
	}
	var routes []netlink.Route
	err := retryDump(func() (err error) {
		routes, err = n.h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		return err
	})
	if err != nil {
		return err
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if r.Type == unix.RTN_UNICAST {
			return nil
		}
		return fmt.Errorf("%s route", routeType(r.Type))
	}
	return fmt.Errorf("no %s default route", fam)
}

// RouteTo reports nil when the kernel's own route lookup in the netns finds
// a unicast route to dst; unreachable, blackhole and prohibit routes are
// errors that say so.
func (n *NetNS) RouteTo(dst netip.Addr) error {
	routes, err := n.h.RouteGet(dst.AsSlice())
	if err != nil {
		// The kernel answers RTM_GETROUTE for these route types with an errno.
		switch {
		case errors.Is(err, syscall.ENETUNREACH):
			return errors.New("network is unreachable")
		case errors.Is(err, syscall.EHOSTUNREACH):
			return errors.New("unreachable route")
		case errors.Is(err, syscall.EINVAL):
			return errors.New("blackhole route")
		case errors.Is(err, syscall.EACCES):
			return errors.New("prohibit route")
		}
		return err
	}
	for _, r := range routes {
		if r.Type != unix.RTN_UNICAST && r.Type != unix.RTN_LOCAL {
			return fmt.Errorf("%s route", routeType(r.Type))
		}
	}
	return nil
}

// Link is a link of the netns and its global addresses.
type Link struct {
	Name  string
	Addrs []netip.Addr
}

// Links lists the netns's links other than loopback, with their global
// addresses: what a caller without prevResult (the CLI) gates on.
func (n *NetNS) Links() ([]Link, error) {
	var links []netlink.Link
	if err := retryDump(func() (err error) { links, err = n.h.LinkList(); return err }); err != nil {
		return nil, err
	}
	var out []Link
	for _, l := range links {
		if l.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		var addrs []netlink.Addr
		if err := retryDump(func() (err error) { addrs, err = n.h.AddrList(l, netlink.FAMILY_ALL); return err }); err != nil {
			return nil, err
		}
		lk := Link{Name: l.Attrs().Name}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok || a.Scope != unix.RT_SCOPE_UNIVERSE {
				continue
			}
			lk.Addrs = append(lk.Addrs, ip.Unmap())
		}
		out = append(out, lk)
	}
	return out, nil
}

// Gateways returns the gateways of the main table's default routes.
func (n *NetNS) Gateways() ([]netip.Addr, error) {
	var routes []netlink.Route
	err := retryDump(func() (err error) {
		routes, err = n.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		return err
	})
	if err != nil {
		return nil, err
	}
	var gws []netip.Addr
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if gw, ok := netip.AddrFromSlice(r.Gw); ok {
			gws = append(gws, gw.Unmap())
		}
	}
	return gws, nil
}

// retryDump repeats a netlink dump that a concurrent change interrupted:
// the kernel then flags the dump as possibly inconsistent.
func retryDump(dump func() error) error {
	var err error
	for range 5 {
		if err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}

func routeType(t int) string {
	switch t {
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	case unix.RTN_THROW:
		return "throw"
	}
	return fmt.Sprintf("type %d", t)
}
