package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/internal/logrec"
)

// Tier 1 of issue 4: the chain the project ships for K3s (conflist/10-flannel-netready.conflist:
// flannel, portmap, bandwidth, netready), run through libcni as containerd runs it, with the
// capability args containerd sends. The machine may be busy with other beds, so timing bounds are
// generous; the real figures are logged.

// tier1FirstSYN bounds a connect that must succeed at once: below the kernel's first SYN
// retransmission (1 s), so success means the first SYN was answered.
const tier1FirstSYN = 900 * time.Millisecond

// TestTier1PortMappings: a hostPort (the portMappings capability, as containerd passes it) still
// works with netready in the chain: from the router, the node's uplink address and hostPort reach
// the listener in the pod, without SNAT; CHECK passes (portmap checks its rules, netready its
// gate); after DEL the hostPort is gone.
func TestTier1PortMappings(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := tier1Bed(t, false)
	logFile := tier1LogFile(b, "portmap")
	list := tier1ShippedList(t, b, map[string]any{"probes": []string{testbed.ProbeDB}, "timeout": "10s", "logFile": logFile})

	const hostPort, containerPort = 30080, 8080
	pod := newPod(t, b)
	pod.PortMappings = []testbed.PortMapping{{HostPort: hostPort, ContainerPort: containerPort, Protocol: "tcp"}}
	start := time.Now()
	res, err := b.Add(ctx, list, pod)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Logf("ADD with a hostPort took %v", time.Since(start).Round(time.Microsecond))
	if rec := tier1LastRecord(t, logFile, "ADD", pod.ContainerID); rec.Outcome != logrec.Ready {
		t.Errorf("netready's ADD record: outcome %q, want ready: %s", rec.Outcome, rec.raw)
	}
	podIP := podAddr(t, res, false).Addr()

	// The container's server starts once the sandbox is up, as with a real runtime.
	l, err := pod.Listen("tcp", fmt.Sprintf(":%d", containerPort))
	if err != nil {
		t.Fatal(err)
	}
	peers := tier1Serve(t, l, pod.Name)
	hostAddr := netip.AddrPortFrom(testbed.NodeUplink, hostPort).String()
	line, took, err := tier1Greeting(ctx, b.Router.Dial, hostAddr, 2*time.Second)
	if err != nil {
		t.Fatalf("router -> %s (hostPort of %s:%d): %v", hostAddr, podIP, containerPort, err)
	}
	if line != pod.Name {
		t.Errorf("router -> %s: read %q, want the pod's greeting %q", hostAddr, line, pod.Name)
	}
	t.Logf("router -> %s -> pod %s:%d: connected in %v", hostAddr, podIP, containerPort, took.Round(time.Microsecond))
	select {
	case peer := <-peers:
		// portmap masquerades only hairpin and localhost traffic: an outside client keeps its address.
		if ap, err := netip.ParseAddrPort(peer.String()); err != nil || ap.Addr().Unmap() != testbed.RouterUplink {
			t.Errorf("the pod saw the connection from %s, want the router's %s (no SNAT)", peer, testbed.RouterUplink)
		}
	case <-time.After(2 * time.Second):
		t.Errorf("the pod's listener saw no connection")
	}

	if err := b.Check(ctx, list, pod); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := b.Del(ctx, list, pod); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if _, _, err := tier1Greeting(ctx, b.Router.Dial, hostAddr, time.Second); err == nil {
		t.Errorf("router -> %s still reaches the pod after DEL: portmap's rules were left behind", hostAddr)
	} else {
		t.Logf("after DEL, router -> %s: %v", hostAddr, err)
	}
}

// TestTier1Bandwidth: the bandwidth capability is still applied with netready in the chain: the
// pod's ingress limit is a tbf on the host-side veth, its egress limit an ingress qdisc there that
// redirects to the plugin's ifb, which carries a tbf; the ifb the bandwidth plugin added to the
// result is still in the result netready passes on; DEL removes the ifb.
func TestTier1Bandwidth(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := tier1Bed(t, false)
	logFile := tier1LogFile(b, "bandwidth")
	list := tier1ShippedList(t, b, map[string]any{"probes": []string{testbed.ProbeDB}, "timeout": "10s", "logFile": logFile})

	pod := newPod(t, b)
	// kubernetes.io/ingress-bandwidth: 1M and egress-bandwidth: 2M, as containerd passes them
	// (bits/s; burst in bits).
	pod.Bandwidth = &testbed.BandwidthLimits{
		IngressRate: 1_000_000, IngressBurst: 1_000_000,
		EgressRate: 2_000_000, EgressBurst: 2_000_000,
	}
	res, err := b.Add(ctx, list, pod)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if rec := tier1LastRecord(t, logFile, "ADD", pod.ContainerID); rec.Outcome != logrec.Ready {
		t.Errorf("netready's ADD record: outcome %q, want ready: %s", rec.Outcome, rec.raw)
	}
	var hostVeth, ifb string
	for _, i := range res.Interfaces {
		switch {
		case i.Sandbox != "":
		case strings.HasPrefix(i.Name, "veth"):
			hostVeth = i.Name
		case strings.HasPrefix(i.Name, "bwp"):
			ifb = i.Name
		}
	}
	if hostVeth == "" {
		t.Fatalf("no host-side veth in the result: %v", res)
	}
	if ifb == "" {
		t.Fatalf("the result lacks the ifb the bandwidth plugin added: netready did not pass its prevResult through: %v", res)
	}

	tc := func(args ...string) string {
		t.Helper()
		out, err := b.Node.Exec(ctx, "tc", args...)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	all := tc("qdisc", "show")
	t.Logf("tc qdisc show (node):\n%s", strings.TrimSpace(all))
	vethQdiscs := tc("qdisc", "show", "dev", hostVeth)
	if !strings.Contains(vethQdiscs, "qdisc tbf ") || !strings.Contains(vethQdiscs, "rate 1Mbit") || !strings.Contains(vethQdiscs, "burst 125000b") {
		t.Errorf("%s: want a tbf of rate 1Mbit, burst 125000b (the pod's ingress limit), got:\n%s", hostVeth, vethQdiscs)
	}
	if !strings.Contains(vethQdiscs, "qdisc ingress ffff:") {
		t.Errorf("%s: want an ingress qdisc (the pod's egress goes to the ifb from there), got:\n%s", hostVeth, vethQdiscs)
	}
	if filters := tc("filter", "show", "dev", hostVeth, "parent", "ffff:"); !strings.Contains(filters, "mirred") || !strings.Contains(filters, ifb) {
		t.Errorf("%s: want a mirred redirect to %s on its ingress, got:\n%s", hostVeth, ifb, filters)
	}
	if ifbQdiscs := tc("qdisc", "show", "dev", ifb); !strings.Contains(ifbQdiscs, "qdisc tbf ") || !strings.Contains(ifbQdiscs, "rate 2Mbit") || !strings.Contains(ifbQdiscs, "burst 250000b") {
		t.Errorf("%s: want a tbf of rate 2Mbit, burst 250000b (the pod's egress limit), got:\n%s", ifb, ifbQdiscs)
	}

	if err := b.Del(ctx, list, pod); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if out, err := b.Node.IP(ctx, "link", "show", "dev", ifb); err == nil {
		t.Errorf("the ifb %s is still on the node after DEL: %s", ifb, out)
	}
}

// tier1Opening is when the bridge had set up a pod and when the path then opened.
type tier1Opening struct {
	bridgeDone time.Time
	opened     testbed.Opened
}

// TestTier1RandomOpening is the first-second outage of k3s issue 11489: the egress path to the db
// (an nft drop in the router) opens a random 0–1500 ms after the bridge set up the pod. With
// netready, in every trial ADD returns after the opening, soon after it, and a connect right after
// ADD succeeds on its first SYN.
func TestTier1RandomOpening(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	b := tier1Bed(t, false)
	logFile := tier1LogFile(b, "random")
	list := tier1ShippedList(t, b, map[string]any{"probes": []string{testbed.ProbeDB}, "timeout": "10s", "logFile": logFile})
	fault, err := b.BlockRouter(ctx)
	if err != nil {
		t.Fatal(err)
	}

	const trials = 10
	var lags, probeLags, exits, connects tier1Durations
	for i := range trials {
		if err := fault.Block(); err != nil {
			t.Fatal(err)
		}
		pod := newPod(t, b)
		delay := rand.N(1500*time.Millisecond + 1)
		bridgeDone := tier1WatchDefaultRoute(t, pod)
		opening := make(chan tier1Opening, 1)
		go func() {
			defer close(opening)
			at, ok := <-bridgeDone
			if !ok {
				return // the test ended first
			}
			if o, ok := <-fault.OpenAt(at.Add(delay)); ok {
				opening <- tier1Opening{bridgeDone: at, opened: o}
			}
		}()

		start := time.Now()
		_, err := b.Add(ctx, list, pod)
		returned := time.Now()
		if err != nil {
			t.Fatalf("trial %d (path opens %v after the bridge): ADD: %v", i, delay, err)
		}
		var o tier1Opening
		select {
		case v, ok := <-opening:
			if !ok {
				t.Fatalf("trial %d: ADD succeeded but the path never opened", i)
			}
			o = v
		case <-time.After(10 * time.Second):
			t.Fatalf("trial %d: ADD succeeded %v after it started, but the path had not opened", i, returned.Sub(start))
		}
		if o.opened.Err != nil {
			t.Fatal(o.opened.Err)
		}
		took, cerr := tier1Connect(ctx, pod, testbed.DBTCP.String(), tier1FirstSYN)
		lag := returned.Sub(o.opened.At)
		rec := tier1LastRecord(t, logFile, "ADD", pod.ContainerID)
		probe := rec.condition(t, testbed.ProbeDB)
		probeAt := rec.readyAt(probe)
		t.Logf("trial %2d: delay %4dms; bridge done at +%6.1fms, path open at +%7.1fms, probe ready at +%7.1fms (attempt %2d), log written at +%7.1fms, ADD returned at +%7.1fms: %6.2fms after the opening; first connect %v",
			i, delay.Milliseconds(), tier1MsSince(start, o.bridgeDone), tier1MsSince(start, o.opened.At), tier1MsSince(start, probeAt), probe.Attempts,
			tier1MsSince(start, rec.Time), tier1MsSince(start, returned), float64(lag.Microseconds())/1000, took.Round(time.Microsecond))
		probeLags = append(probeLags, probeAt.Sub(o.opened.At))
		exits = append(exits, returned.Sub(probeAt))

		what := fmt.Sprintf("trial %d", i)
		tier1CheckOpened(t, what, o.opened.Requested, o.opened.At, returned)
		tier1CheckReady(t, what+": "+testbed.ProbeDB, o.opened.At, probeAt)
		lags = append(lags, lag)
		if cerr != nil {
			t.Errorf("trial %d: first connect right after ADD: %v (took %v)", i, cerr, took)
		}
		connects = append(connects, took)

		if err := b.Del(ctx, list, pod); err != nil {
			t.Errorf("trial %d: DEL: %v", i, err)
		}
		if err := pod.Remove(); err != nil {
			t.Error(err)
		}
	}
	t.Logf("ADD return - path opening, %d trials: %v", trials, lags)
	t.Logf("  of which probe ready - opening:   %v", probeLags)
	t.Logf("  and ADD return - probe ready:     %v", exits)
	t.Logf("first connect after ADD:            %v", connects)
}

func tier1MsSince(start, at time.Time) float64 { return float64(at.Sub(start).Microseconds()) / 1000 }

// TestTier1DualStackProbes: on a dual-stack node, netready gated on IPv6 targets only
// (tcp://[2001:db8:2::10]:5432 and icmp://[2001:db8:2::10]) holds ADD while the router drops the
// path and returns soon after it opens; its log shows the pod's IPv6 address settled (not
// tentative), the IPv6 default route, the route to the target and both probes ready; after ADD
// the pod connects over IPv4 and IPv6 on the first SYN.
func TestTier1DualStackProbes(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := tier1Bed(t, true)
	logFile := tier1LogFile(b, "dualstack")
	tcp6 := "tcp://" + testbed.DBTCP6.String()
	icmp6 := "icmp://[" + testbed.DBAddr6.String() + "]"
	list := tier1ShippedList(t, b, map[string]any{"probes": []string{tcp6, icmp6}, "timeout": "10s", "logFile": logFile})
	fault, err := b.BlockRouter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pod := newPod(t, b)

	// The path opens 300 ms after the bridge set the pod up, so that netready, last in the
	// chain, surely starts while it is blocked, busy machine or not.
	bridgeDone := tier1WatchDefaultRoute(t, pod)
	opened := make(chan tier1Opening, 1)
	go func() {
		defer close(opened)
		if at, ok := <-bridgeDone; ok {
			if o, ok := <-fault.OpenAt(at.Add(300 * time.Millisecond)); ok {
				opened <- tier1Opening{bridgeDone: at, opened: o}
			}
		}
	}()
	start := time.Now()
	res, err := b.Add(ctx, list, pod)
	returned := time.Now()
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	var op tier1Opening
	select {
	case v, ok := <-opened:
		if !ok || v.opened.Err != nil {
			t.Fatalf("the path did not open: %v", v.opened.Err)
		}
		op = v
	case <-time.After(10 * time.Second):
		t.Fatalf("ADD succeeded %v after it started, but the path had not opened", returned.Sub(start))
	}
	o := op.opened
	lag := tier1CheckOpened(t, "IPv6 probes", o.Requested, o.At, returned)
	t.Logf("bridge done at +%.1fms, path open at +%.1fms, ADD returned at +%.1fms: %v after the opening",
		tier1MsSince(start, op.bridgeDone), tier1MsSince(start, o.At), tier1MsSince(start, returned), lag.Round(time.Microsecond))

	v4 := podAddr(t, res, false).Addr()
	v6 := podAddr(t, res, true).Addr()
	rec := tier1LastRecord(t, logFile, "ADD", pod.ContainerID)
	if rec.Outcome != logrec.Ready {
		t.Errorf("netready's ADD record: outcome %q, want ready: %s", rec.Outcome, rec.raw)
	}
	for _, name := range []string{
		"address " + v4.String() + " on eth0",
		"address " + v6.String() + " on eth0",
		"IPv4 default route",
		"IPv6 default route",
		"gateway " + testbed.PodGateway6.String(),
		"route to " + testbed.DBAddr6.String(),
		tcp6,
		icmp6,
	} {
		c := rec.condition(t, name)
		t.Logf("condition %-32s ready=%v after %8.3fms, %d attempts", name, c.Ready, c.AfterMS, c.Attempts)
		if !c.Ready {
			t.Errorf("condition %s not ready: %s", name, c.Error)
		}
	}
	// Each probe held soon after the path opened.
	for _, probe := range []string{tcp6, icmp6} {
		lag := tier1CheckReady(t, probe, o.At, rec.readyAt(rec.condition(t, probe)))
		t.Logf("probe %s ready %v after the path opened", probe, lag.Round(time.Microsecond))
	}

	for _, target := range []netip.AddrPort{testbed.DBTCP, testbed.DBTCP6} {
		took, err := tier1Connect(ctx, pod, target.String(), tier1FirstSYN)
		if err != nil {
			t.Errorf("pod -> %s right after ADD: %v", target, err)
		}
		t.Logf("pod -> %s right after ADD: connected in %v", target, took.Round(time.Microsecond))
	}
	if err := b.Del(ctx, list, pod); err != nil {
		t.Errorf("DEL: %v", err)
	}
}
