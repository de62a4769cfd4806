package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/internal/logrec"
)

// A two-node K3s cluster with flannel's VXLAN backend, as two beds whose nodes are joined by an
// underlay link:
//
//	[pod A] ── cni0 [node A] flannel.1 ─┐                    ┌─ flannel.1 [node B] cni0 ── [pod B]
//	10.42.0.x   10.42.0.1  10.42.0.0/32 └ underlay ─ underlay┘ 10.42.1.0/32 10.42.1.1  10.42.1.x
//	                       203.0.113.1                        203.0.113.2
//
// Each bed keeps its own router and db, unused here but for one route: a node's default route leads
// to its router, which (like a real upstream router) knows nothing of the other node's pod subnet
// (a blackhole route there), so until flannel programs the VXLAN entries, pod-to-pod packets vanish.

// tier1VXLANNode is one node of the cluster: its bed, the underlay address and the pod subnet
// flanneld leased it.
type tier1VXLANNode struct {
	bed      *testbed.Bed
	underlay netip.Addr   // on the "underlay" link: flannel's public IP, the VTEP's local address
	subnet   netip.Prefix // FLANNEL_SUBNET's network: 10.42.N.0/24
	vtepMAC  net.HardwareAddr
}

// flannel's VXLAN backend defaults (flannel-io/flannel pkg/backend/vxlan).
const (
	tier1VNI       = 1
	tier1VXLANPort = 8472
	tier1VTEP      = "flannel.1"
)

var tier1UnderlayNet = netip.MustParsePrefix("203.0.113.0/24") // RFC 5737 TEST-NET-3

// tier1TwoNodes starts two beds and turns them into a cluster: node B's subnet.env leases it
// 10.42.1.0/24, an underlay veth joins the nodes (created directly in their netns), and each node
// has flannel.1 as flanneld creates it, with no entries for the other node yet. Everything is in
// the beds' netns and dir, so closing the beds removes it.
func tier1TwoNodes(ctx context.Context, t *testing.T) (a, b *tier1VXLANNode) {
	t.Helper()
	a = &tier1VXLANNode{bed: tier1Bed(t, false), underlay: netip.MustParseAddr("203.0.113.1"), subnet: netip.MustParsePrefix("10.42.0.0/24")}
	b = &tier1VXLANNode{bed: tier1Bed(t, false), underlay: netip.MustParseAddr("203.0.113.2"), subnet: netip.MustParsePrefix("10.42.1.0/24")}

	// What flanneld writes on node B (the bed wrote node A's: 10.42.0.1/24).
	env := "FLANNEL_NETWORK=" + testbed.ClusterCIDR.String() + "\n" +
		"FLANNEL_SUBNET=" + netip.PrefixFrom(b.subnet.Addr().Next(), b.subnet.Bits()).String() + "\n" +
		"FLANNEL_MTU=" + strconv.Itoa(testbed.FlannelMTU) + "\nFLANNEL_IPMASQ=true\n"
	if err := os.WriteFile(b.bed.SubnetEnv, []byte(env), 0o644); err != nil {
		t.Fatal(err)
	}

	ip := func(n *testbed.Netns, args ...string) {
		t.Helper()
		if _, err := n.IP(ctx, args...); err != nil {
			t.Fatal(err)
		}
	}
	ip(a.bed.Node, "link", "add", "underlay", "type", "veth", "peer", "name", "underlay", "netns", b.bed.Node.Name)
	for _, n := range []*tier1VXLANNode{a, b} {
		node := n.bed.Node
		ip(node, "addr", "add", netip.PrefixFrom(n.underlay, tier1UnderlayNet.Bits()).String(), "dev", "underlay")
		ip(node, "link", "set", "underlay", "up")
		// flanneld: a VXLAN device on the public interface, learning off (flanneld programs
		// every entry), MTU of the underlay minus the 50 bytes of encapsulation, and the
		// subnet's network address as a /32.
		ip(node, "link", "add", tier1VTEP, "type", "vxlan", "id", strconv.Itoa(tier1VNI), "local", n.underlay.String(),
			"dev", "underlay", "dstport", strconv.Itoa(tier1VXLANPort), "nolearning")
		ip(node, "link", "set", tier1VTEP, "mtu", strconv.Itoa(testbed.FlannelMTU), "up")
		ip(node, "addr", "add", netip.PrefixFrom(n.subnet.Addr(), 32).String(), "dev", tier1VTEP)

		h, err := node.Netlink()
		if err != nil {
			t.Fatal(err)
		}
		link, err := h.LinkByName(tier1VTEP)
		h.Delete()
		if err != nil {
			t.Fatal(err)
		}
		vx, ok := link.(*netlink.Vxlan)
		if !ok || vx.VxlanId != tier1VNI || vx.Port != tier1VXLANPort || vx.Learning || vx.MTU != testbed.FlannelMTU {
			t.Fatalf("%s on %s: %+v, want VNI %d, port %d, nolearning, MTU %d", tier1VTEP, node.Name, link, tier1VNI, tier1VXLANPort, testbed.FlannelMTU)
		}
		n.vtepMAC = vx.HardwareAddr
	}
	// The upstream routers know nothing of the other node's pods.
	ip(a.bed.Router, "route", "add", "blackhole", b.subnet.String())
	ip(b.bed.Router, "route", "add", "blackhole", a.subnet.String())
	return a, b
}

// programVXLAN does on node n what flanneld's VXLAN backend does when it learns of peer's lease
// (handleSubnetEvents, in its order): the ARP entry for the peer's VTEP address, the FDB entry
// sending that MAC to the peer's public IP, then the route to the peer's subnet through flannel.1,
// onlink. It returns when the route was in place: the path is open from then.
func (n *tier1VXLANNode) programVXLAN(peer *tier1VXLANNode) (time.Time, error) {
	h, err := n.bed.Node.Netlink()
	if err != nil {
		return time.Time{}, err
	}
	defer h.Delete()
	link, err := h.LinkByName(tier1VTEP)
	if err != nil {
		return time.Time{}, err
	}
	idx := link.Attrs().Index
	vtepIP := net.IP(peer.subnet.Addr().AsSlice())
	// ip neigh replace 10.42.N.0 lladdr <peer's MAC> dev flannel.1 nud permanent
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: idx, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
		IP: vtepIP, HardwareAddr: peer.vtepMAC}); err != nil {
		return time.Time{}, fmt.Errorf("arp entry: %w", err)
	}
	// bridge fdb replace <peer's MAC> dst <peer's underlay IP> dev flannel.1 self permanent
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
		Flags: netlink.NTF_SELF, IP: net.IP(peer.underlay.AsSlice()), HardwareAddr: peer.vtepMAC}); err != nil {
		return time.Time{}, fmt.Errorf("fdb entry: %w", err)
	}
	// ip route replace 10.42.N.0/24 via 10.42.N.0 dev flannel.1 onlink
	dst := &net.IPNet{IP: net.IP(peer.subnet.Addr().AsSlice()), Mask: net.CIDRMask(peer.subnet.Bits(), 32)}
	if err := h.RouteReplace(&netlink.Route{LinkIndex: idx, Scope: netlink.SCOPE_UNIVERSE, Dst: dst, Gw: vtepIP,
		Flags: int(netlink.FLAG_ONLINK)}); err != nil {
		return time.Time{}, fmt.Errorf("route: %w", err)
	}
	return time.Now(), nil
}

// TestTier1TwoNodeVXLAN: a pod on node A gated (tcp://<pod B>:8080) on a pod of node B that runs
// a TCP listener, while node A's flanneld programs its VXLAN entries for node B late (400 ms after
// the pod's ADD started; node B had its entries for node A already, as when node B has just
// joined). ADD on A returns only after the programming, within milliseconds: the route is a
// change in the node's netns, which netready watches. The pod then reaches pod B on the first SYN.
func TestTier1TwoNodeVXLAN(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, b := tier1TwoNodes(ctx, t)
	if _, err := b.programVXLAN(a); err != nil {
		t.Fatalf("node B: %v", err)
	}

	// Pod B: the same shipped chain, gated on nothing but its own links, routes and gateway.
	listB := tier1ShippedList(t, b.bed, map[string]any{"timeout": "10s", "logFile": tier1LogFile(b.bed, "vxlan-b")})
	podB := newPod(t, b.bed)
	resB, err := b.bed.Add(ctx, listB, podB)
	if err != nil {
		t.Fatalf("ADD on node B: %v", err)
	}
	ipB := tier1ResultAddr(t, resB.IPs)
	if !b.subnet.Contains(ipB) {
		t.Fatalf("pod B got %s, want an address of node B's subnet %s", ipB, b.subnet)
	}
	const port = 8080
	l, err := podB.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	tier1Serve(t, l, podB.Name)
	target := netip.AddrPortFrom(ipB, port)

	logFile := tier1LogFile(a.bed, "vxlan-a")
	probe := "tcp://" + target.String()
	listA := tier1ShippedList(t, a.bed, map[string]any{"probes": []string{probe}, "timeout": "15s", "logFile": logFile})
	podA := newPod(t, a.bed)

	// Node A's flanneld learns of node B's lease 400 ms after the pod's ADD started.
	type programmed struct {
		began, at time.Time // the first netlink call; the route in place
		err       error
	}
	programming := make(chan programmed, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	wg.Go(func() {
		select {
		case <-time.After(400 * time.Millisecond):
			began := time.Now()
			at, err := a.programVXLAN(b)
			programming <- programmed{began, at, err}
		case <-stop: // the test ended first
		}
	})
	t.Cleanup(func() { close(stop); wg.Wait() }) // before the beds close
	resA, err := a.bed.Add(ctx, listA, podA)
	returned := time.Now()
	if err != nil {
		t.Fatalf("ADD on node A: %v", err)
	}
	p := <-programming
	if p.err != nil {
		t.Fatalf("programming node A: %v", p.err)
	}
	ipA := tier1ResultAddr(t, resA.IPs)
	if !a.subnet.Contains(ipA) {
		t.Errorf("pod A got %s, want an address of node A's subnet %s", ipA, a.subnet)
	}
	lag := tier1CheckOpened(t, "VXLAN programmed late", p.began, p.at, returned)
	rec := tier1LastRecord(t, logFile, "ADD", podA.ContainerID)
	c := rec.condition(t, probe)
	ready := tier1CheckReady(t, probe, p.at, rec.readyAt(c))
	t.Logf("pod A %s gated on pod B %s: VXLAN programmed on node A at +%.1fms (%v of netlink calls), %s ready %v later (attempt %d), ADD returned %v after the route",
		ipA, target, tier1MsSince(start, p.at), p.at.Sub(p.began).Round(time.Microsecond), probe, ready.Round(time.Microsecond), c.Attempts, lag.Round(time.Microsecond))
	if rec.Outcome != logrec.Ready {
		t.Errorf("netready's ADD record on node A: outcome %q, want ready: %s", rec.Outcome, rec.raw)
	}

	line, took, err := tier1Greeting(ctx, podA.Dial, target.String(), tier1FirstSYN)
	if err != nil {
		t.Errorf("pod A -> pod B %s right after ADD: %v", target, err)
	} else if line != podB.Name {
		t.Errorf("pod A -> %s: read %q, want pod B's greeting %q", target, line, podB.Name)
	}
	t.Logf("pod A -> pod B over VXLAN right after ADD: connected in %v", took.Round(time.Microsecond))

	// What node A holds is what flannel's VXLAN backend programs (K3S.md).
	show := func(args ...string) string {
		t.Helper()
		out, err := a.bed.Node.IP(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	for _, tc := range []struct{ got, want string }{
		{show("route", "show", b.subnet.String()), fmt.Sprintf("%s via %s dev %s onlink", b.subnet, b.subnet.Addr(), tier1VTEP)},
		{show("neigh", "show", "dev", tier1VTEP), fmt.Sprintf("%s lladdr %s PERMANENT", b.subnet.Addr(), b.vtepMAC)},
		{tier1Bridge(ctx, t, a.bed.Node, "fdb", "show", "dev", tier1VTEP), fmt.Sprintf("%s dst %s self permanent", b.vtepMAC, b.underlay)},
		{show("-d", "link", "show", tier1VTEP), fmt.Sprintf("vxlan id %d local %s dev underlay", tier1VNI, a.underlay)},
	} {
		if !strings.Contains(tc.got, tc.want) {
			t.Errorf("node A: want %q in\n%s", tc.want, tc.got)
		}
	}

	if err := a.bed.Del(ctx, listA, podA); err != nil {
		t.Errorf("DEL on node A: %v", err)
	}
	if err := b.bed.Del(ctx, listB, podB); err != nil {
		t.Errorf("DEL on node B: %v", err)
	}
}

// tier1Bridge runs `bridge` (iproute2) in the netns.
func tier1Bridge(ctx context.Context, t *testing.T, n *testbed.Netns, args ...string) string {
	t.Helper()
	out, err := n.Exec(ctx, "bridge", args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
