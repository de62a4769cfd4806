package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Fault is a break in the path between pods and the db that a test lifts at a chosen time.
// Block and Unblock may be repeated; both are idempotent.
type Fault struct {
	name    string
	bed     *Bed
	block   func() error
	unblock func() (time.Time, error) // returns the moment the path opened

	mu sync.Mutex // serializes Block and Unblock
}

// Opened reports a lifted Fault. The path is open from At on, to within tens of microseconds: for
// the route faults At is taken right after the netlink call that replaced the route; for
// BlockRouter it is when the kernel's nf_tables commit notification arrived (the nft process
// exits milliseconds later). Requested is when the lift began.
type Opened struct {
	Requested time.Time
	At        time.Time
	Err       error
}

func (f *Fault) String() string { return f.name }

// Block (re)installs the fault.
func (f *Fault) Block() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.block(); err != nil {
		return fmt.Errorf("%s: block: %w", f.name, err)
	}
	return nil
}

// Unblock lifts the fault now and returns the moment the path was open.
func (f *Fault) Unblock() (time.Time, error) {
	o := f.open()
	return o.At, o.Err
}

func (f *Fault) open() Opened {
	f.mu.Lock()
	defer f.mu.Unlock()
	o := Opened{Requested: time.Now()}
	at, err := f.unblock()
	if err != nil {
		o.Err = fmt.Errorf("%s: unblock: %w", f.name, err)
	}
	o.At = at
	return o
}

// OpenAt lifts the fault at the given time, in the background. The channel (buffered) receives
// one Opened, or is closed without a value when the bed closes first.
func (f *Fault) OpenAt(at time.Time) <-chan Opened {
	ch := make(chan Opened, 1)
	b := f.bed
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		close(ch)
		return ch
	}
	b.timers.Go(func() { // under mu, so that Close's Wait sees it
		defer close(ch)
		if b.wait(at) {
			ch <- f.open()
		}
	})
	return ch
}

// OpenAfter is OpenAt(time.Now().Add(d)).
func (f *Fault) OpenAfter(d time.Duration) <-chan Opened { return f.OpenAt(time.Now().Add(d)) }

// nftTable is the bed's fault table in the router netns.
const nftTable = "netready_e2e_fault"

// BlockRouter installs an nft drop rule in the router's forward hook for everything to or from the
// db's subnets (table inet netready_e2e_fault), with `ip netns exec <router> nft`: pods get no
// answer, as with a remote firewall or a path not yet programmed beyond the node. Unblock deletes
// the table. ctx bounds every later nft run of the fault too.
func (b *Bed) BlockRouter(ctx context.Context) (*Fault, error) {
	del := fmt.Sprintf("table inet %s\ndelete table inet %s\n", nftTable, nftTable) // idempotent
	add := del + fmt.Sprintf(`table inet %s {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip daddr %s drop
		ip saddr %s drop
		ip6 daddr %s drop
		ip6 saddr %s drop
	}
}
`, nftTable, DBNet, DBNet, DBNet6, DBNet6)
	nft := func(script string) error {
		_, err := b.Router.ExecInput(ctx, script, "nft", "-f", "-")
		return err
	}
	return b.newFault("nft drop in router", func() error { return nft(add) }, func() (time.Time, error) {
		return nftCommitTime(b.Router, func() error { return nft(del) })
	})
}

// nftCommitTime runs change (an nft invocation in n) and returns when the kernel committed it:
// the arrival of the NFT_MSG_NEWGEN notification that ends every nf_tables transaction, read by a
// listener in n while the nft process runs. The process's exit comes several milliseconds later.
func nftCommitTime(n *Netns, change func() error) (time.Time, error) {
	var fd int
	err := n.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		err = unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)})
		if err != nil {
			unix.Close(fd)
		}
		return err
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("nf_tables listener: %w", err)
	}
	sock := os.NewFile(uintptr(fd), "nf_tables listener") // non-blocking: reads honour deadlines
	defer sock.Close()
	sock.SetReadDeadline(time.Now().Add(10 * time.Second))

	type seen struct {
		at  time.Time
		err error
	}
	commit := make(chan seen, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := sock.Read(buf)
			at := time.Now()
			if err != nil {
				commit <- seen{err: err}
				return
			}
			msgs, err := syscall.ParseNetlinkMessage(buf[:n])
			if err != nil {
				commit <- seen{err: err}
				return
			}
			for _, m := range msgs {
				if m.Header.Type == unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWGEN {
					commit <- seen{at: at}
					return
				}
			}
		}
	}()
	if err := change(); err != nil {
		sock.SetReadDeadline(time.Now()) // stop the reader
		<-commit
		return time.Time{}, err
	}
	c := <-commit
	if c.err != nil {
		return time.Time{}, fmt.Errorf("waiting for the nf_tables commit: %w", c.err)
	}
	return c.at, nil
}

// BlackholeNode adds a blackhole route to the db (/32 and /128) on the node, as a node whose
// routes to a destination are not programmed yet: the pod's packets vanish. Unblock replaces it,
// atomically, with a real route to the db via the router.
func (b *Bed) BlackholeNode(ctx context.Context) (*Fault, error) {
	return b.nodeRouteFault("blackhole route on node", unix.RTN_BLACKHOLE)
}

// ProhibitNode is BlackholeNode with a prohibit route: the node answers with ICMP "administratively
// prohibited", so the pod's connect fails at once with "no route to host" (as in k3s issue 11489).
func (b *Bed) ProhibitNode(ctx context.Context) (*Fault, error) {
	return b.nodeRouteFault("prohibit route on node", unix.RTN_PROHIBIT)
}

func (b *Bed) nodeRouteFault(name string, routeType int) (*Fault, error) {
	h, err := b.Node.Netlink()
	if err != nil {
		return nil, err
	}
	uplink, err := h.LinkByName("uplink")
	h.Delete()
	if err != nil {
		return nil, err
	}
	hosts := []netip.Addr{DBAddr, DBAddr6}
	gws := []netip.Addr{RouterUplink, RouterUplink6}
	return b.newFault(name, func() error {
		return replaceRoutes(b.Node, func(i int) *netlink.Route {
			return &netlink.Route{Dst: hostNet(hosts[i]), Type: routeType}
		}, len(hosts))
	}, func() (time.Time, error) {
		h, err := b.Node.Netlink()
		if err != nil {
			return time.Now(), err
		}
		defer h.Delete()
		// The path to the db's IPv4 address, which the probes use, opens with the first route:
		// the clock is read then. Read after the IPv6 route too, it came after netready, woken
		// by the first route's event, had answered (a detect time of -0.3 ms, once).
		var at time.Time
		for i := range hosts {
			if err := h.RouteReplace(&netlink.Route{Dst: hostNet(hosts[i]), Gw: net.IP(gws[i].AsSlice()), LinkIndex: uplink.Attrs().Index}); err != nil {
				return time.Now(), err
			}
			if i == 0 {
				at = time.Now()
			}
		}
		return at, nil
	})
}

// RemovePodRoute removes the pod's default routes, as a pod whose routes are added late. Unblock
// adds them back via cni0 (PodGateway, and PodGateway6 on a dual-stack bed), which needs the pod's
// eth0 and address in place: lift it after the bridge plugin has run.
func (b *Bed) RemovePodRoute(p *Pod) (*Fault, error) {
	gws := []netip.Addr{PodGateway}
	if b.DualStack {
		gws = append(gws, PodGateway6)
	}
	return b.newFault("default route missing in pod "+p.Name, func() error {
		h, err := p.Netlink()
		if err != nil {
			return err
		}
		defer h.Delete()
		for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			routes, err := h.RouteListFiltered(family, &netlink.Route{Dst: nil}, netlink.RT_FILTER_DST)
			if err != nil {
				return err
			}
			for _, r := range routes {
				if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
					return err
				}
			}
		}
		return nil
	}, func() (time.Time, error) {
		h, err := p.Netlink()
		if err != nil {
			return time.Time{}, err
		}
		defer h.Delete()
		link, err := h.LinkByName(p.IfName)
		if err != nil {
			return time.Time{}, err
		}
		for _, gw := range gws {
			dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if gw.Is6() {
				dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
			r := &netlink.Route{Dst: prefixNet(dst), Gw: net.IP(gw.AsSlice()), LinkIndex: link.Attrs().Index}
			if err := h.RouteReplace(r); err != nil {
				return time.Time{}, fmt.Errorf("default via %s: %w", gw, err)
			}
		}
		return time.Now(), nil
	})
}

// newFault makes the fault and installs it.
func (b *Bed) newFault(name string, block func() error, unblock func() (time.Time, error)) (*Fault, error) {
	f := &Fault{name: name, bed: b, block: block, unblock: unblock}
	return f, f.Block()
}

// replaceRoutes replaces n routes in one netlink handle, so that lifting takes one round of
// syscalls and no process start.
func replaceRoutes(n *Netns, route func(i int) *netlink.Route, count int) error {
	h, err := n.Netlink()
	if err != nil {
		return err
	}
	defer h.Delete()
	for i := range count {
		if err := h.RouteReplace(route(i)); err != nil {
			return err
		}
	}
	return nil
}

func hostNet(a netip.Addr) *net.IPNet { return prefixNet(netip.PrefixFrom(a, a.BitLen())) }

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
