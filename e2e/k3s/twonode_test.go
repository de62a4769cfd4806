package k3s

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// TwoNodeEnv turns TestTwoNode on.
const TwoNodeEnv = "E2E_K3S_TWONODE"

// TestTwoNode (opt-in, E2E_K3S_TWONODE=1): a real K3s agent joins the tier's server from a
// second node netns, in a mount namespace of its own and under a cgroup root of its own.
//   - vxlan: the agent is Ready; its pods get addresses from its own flannel subnet; a pod on the
//     agent connects to a pod on the server, which sees the agent pod's own address, and the
//     router between the two node netns counts flannel's VXLAN packets (UDP 8472) both ways;
//     a pod on the agent reaches the db (through the agent's own route to the router).
//   - netready: `netready install` on the agent's data dir fills podWatch from the agent's
//     kubelet.kubeconfig (K3s's agent load balancer, https://127.0.0.1:6444); a pod there is
//     gated (its ready ADD line); pods deleted while their ADD waits behind a blocked path are
//     gone <= 5 s after the delete, through the API server reached via :6444.
//   - hunt: the seed hunt's baseline, burst and NetworkPolicy conditions (TestHunt) with the
//     pods on the agent, reaching the db through the agent's own route to the router
//     (E2E_K3S_HUNT_N pods each, default 10; K3s's chain, no netready): every pod must connect;
//     the figures are the finding.
//   - hunt-firewalld: firewalld's iptables FORWARD on the agent before its K3s starts (restarted),
//     10 pods one at a time: first connects fail with "no route to host" (the outage: its length
//     is the finding); then with K3s's trusted zone: none may fail.
func TestTwoNode(t *testing.T) {
	if os.Getenv(TwoNodeEnv) != "1" {
		t.Skip("opt-in: " + TwoNodeEnv + "=1 starts a K3s agent beside the server (two K3s on this machine, several minutes)")
	}
	n := need(t)
	ctx := t.Context()
	load0 := loadavg()
	begin := time.Now()
	a, err := n.StartAgent(ctx)
	joined := time.Since(begin)
	if err != nil {
		if a != nil {
			if _, serr := os.Stat(a.ContainerdLog()); serr == nil {
				t.Logf("agent's containerd log: %s\n%s", a.ContainerdLog(), tail(a.ContainerdLog(), 20))
			}
		}
		a.Close()
		t.Fatal(err)
	}
	t.Logf("agent %s Ready %v after its start (load %s)", AgentName, joined.Round(100*time.Millisecond), load0)
	figures.SetIn("twonode", "agent_ready_s", round1(joined.Seconds()))
	const ns, huntNS, burstNS, netpolNS, fwNS, fwTrustedNS = "e2e-twonode", "e2e-twonode-hunt", "e2e-twonode-burst", "e2e-twonode-netpol", "e2e-twonode-fwipt", "e2e-twonode-fwipt-trusted"
	t.Cleanup(func() {
		// The namespaces first (the kubelets tear the pods down), then the agent.
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		for _, ns := range []string{ns, huntNS, burstNS, netpolNS, fwNS, fwTrustedNS} {
			n.API.Do(ctx, "DELETE", "/api/v1/namespaces/"+ns, nil, nil)
		}
		for _, ns := range []string{ns, huntNS, burstNS, netpolNS, fwNS, fwTrustedNS} {
			for n.API.Do(ctx, "GET", "/api/v1/namespaces/"+ns, nil, nil) == nil && ctx.Err() == nil {
				time.Sleep(200 * time.Millisecond)
			}
		}
		cancel()
		if err := a.Close(); err != nil {
			t.Error(err)
		}
		figures.SetIn("twonode", "test_s", round1(time.Since(begin).Seconds()))
		t.Logf("the agent's part took %v; load average at its start %s, at its end %s", time.Since(begin).Round(time.Second), load0, loadavg())
	})
	if err := n.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	t.Run("vxlan", func(t *testing.T) { twoNodeVXLAN(t, n, a, ns) })
	t.Run("netready", func(t *testing.T) { twoNodeNetready(t, n, a, ns) })
	t.Run("hunt", func(t *testing.T) {
		count := huntCount(t)
		// K3s's own chain: netready was uninstalled when the netready subtest ended.
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			chain, err := a.LiveChain(t.Context())
			if err == nil && !slices.Contains(chain, "netready") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the agent's containerd still loads %v (err %v), want K3s's chain", chain, err)
			}
		}
		for _, c := range []struct {
			name, ns string
			inFlight int
			netpol   bool
		}{{"baseline", huntNS, 1, false}, {"burst", burstNS, count, false}, {"netpol", netpolNS, 1, true}} {
			if c.netpol {
				applyHuntPolicies(t, n, c.ns)
			}
			s := huntSummaryOf(t, n, c.ns, count, c.inFlight, PodSpec{NodeName: AgentName})
			t.Logf("hunt on the agent, %s: %s", c.name, s)
			figures.SetIn("twonode", "hunt_"+c.name, s)
			if s.NeverConnected > 0 {
				t.Errorf("hunt on the agent, %s: %d of %d pods never reached the db", c.name, s.NeverConnected, s.Pods)
			}
		}
	})
	t.Run("hunt-firewalld", func(t *testing.T) {
		count := huntCount(t)
		chain := firewalldIptablesFirst(t, a.Netns, a.Restart)
		figures.SetIn("twonode", "hunt_firewalld_iptables_forward_chain", chain)
		s := huntSummaryOf(t, n, fwNS, count, 1, PodSpec{NodeName: AgentName})
		s.Notes = "on the agent: firewalld's iptables backend in FORWARD (REJECT icmp-host-prohibited last), the agent's K3s restarted after it, no exceptions; one pod at a time"
		t.Logf("hunt on the agent, firewalld-iptables: %s", s)
		figures.SetIn("twonode", "hunt_firewalld_iptables", s)
		// What must hold for the rules to be in place (as TestSeedFirewalld on the server): first
		// connects fail, each with "no route to host". How long the outage lasts is the finding
		// (a pod may not get out within the app's 8 s on a loaded machine).
		if s.FirstConnectFailures == 0 || s.Errors["no route"] != s.FirstConnectFailures {
			t.Errorf("hunt on the agent, firewalld-iptables: %d of %d first connects failed (%v), want at least one, each \"no route\" (firewalld's icmp-host-prohibited)", s.FirstConnectFailures, s.Pods, s.Errors)
		}
		if _, err := a.Netns.ExecInput(t.Context(), firewalldIptablesTrusted(k3sTrustedSources), "iptables-restore", "--noflush"); err != nil {
			t.Fatal(err)
		}
		s = huntSummaryOf(t, n, fwTrustedNS, count, 1, PodSpec{NodeName: AgentName})
		s.Notes = "as hunt_firewalld_iptables plus the trusted zone for 10.42.0.0/16 and 10.43.0.0/16 (K3s's docs)"
		t.Logf("hunt on the agent, firewalld-iptables, trusted zone: %s", s)
		figures.SetIn("twonode", "hunt_firewalld_iptables_trusted", s)
		if s.FirstConnectFailures > 0 || s.NeverConnected > 0 {
			t.Errorf("hunt on the agent, firewalld-iptables with the trusted zone: %d first connects failed, %d never connected; want none", s.FirstConnectFailures, s.NeverConnected)
		}
	})
}

func twoNodeVXLAN(t *testing.T, n *Node, a *Agent, ns string) {
	ctx := t.Context()
	serverNet, err := flannelSubnet(subnetEnv)
	if err != nil {
		t.Fatal(err)
	}
	agentNet, err := flannelSubnet(a.SubnetEnv())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("flannel subnets: server %v, agent %v", serverNet, agentNet)
	if serverNet == agentNet || !testbed.ClusterCIDR.Contains(agentNet.Addr()) {
		t.Fatalf("the agent's flannel subnet %v: want its own in %v, not the server's %v", agentNet, testbed.ClusterCIDR, serverNet)
	}
	counters, err := countVXLAN(ctx, n.Bed.Router)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(counters.remove)

	// A listening pod on the server, a pod on the agent that connects to it.
	listener := PodSpec{Namespace: ns, Name: "listener", NodeName: NodeName, AppArgs: []string{"-listen", ":8080"}}
	if err := n.Apply(ctx, listener); err != nil {
		t.Fatal(err)
	}
	lp, err := n.WaitPhase(ctx, ns, listener.Name, 2*time.Minute, "Running")
	if err != nil {
		t.Fatal(err)
	}
	lip := netip.MustParseAddr(lp.Status.PodIP)
	before, err := counters.read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	client := PodSpec{Namespace: ns, Name: "to-server-pod", NodeName: AgentName, AppArgs: []string{"-target", netip.AddrPortFrom(lip, 8080).String(), "-deadline", "60s"}}
	toDB := PodSpec{Namespace: ns, Name: "to-db", NodeName: AgentName}
	for _, p := range []PodSpec{client, toDB} {
		if err := n.Apply(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	agentIPs := map[string]netip.Addr{}
	for _, p := range []PodSpec{client, toDB} {
		got, err := n.WaitPhase(ctx, ns, p.Name, 2*time.Minute, "Succeeded")
		if err != nil {
			t.Fatal(err)
		}
		ip, err := netip.ParseAddr(got.Status.PodIP)
		if err != nil || !agentNet.Contains(ip) {
			t.Errorf("pod %s on the agent has address %q, want one in the agent's subnet %v", p.Name, got.Status.PodIP, agentNet)
		}
		agentIPs[p.Name] = ip
		r, err := n.AppReport(ctx, ns, p.Name, "app")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("pod %s (%v, on %s) -> %s: connected %.1f ms after its start, %d attempts, first failed %v %s", p.Name, ip, AgentName, r.Target, r.MSToConnect(), r.Attempts, r.FirstFailed, r.FirstError)
		figures.SetIn("twonode", "agent_pod_"+p.Name+"_ms", round1(r.MSToConnect()))
	}
	if !serverNet.Contains(lip) {
		t.Errorf("the listener on the server has address %v, want one in the server's subnet %v", lip, serverNet)
	}
	peers, err := listenerPeers(ctx, n, ns, listener.Name)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(peers, agentIPs[client.Name]) {
		t.Errorf("the listener on the server saw connections from %v, want the agent pod's own address %v (pod to pod, no NAT)", peers, agentIPs[client.Name])
	}
	after, err := counters.read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	toAgent, toServer := after[0]-before[0], after[1]-before[1]
	t.Logf("VXLAN (UDP 8472) packets through the router while the agent's pods ran: server -> agent %d, agent -> server %d", toAgent, toServer)
	figures.SetIn("twonode", "vxlan_packets", map[string]int{"server_to_agent": toAgent, "agent_to_server": toServer})
	if toAgent == 0 || toServer == 0 {
		t.Errorf("VXLAN packets between the node netns: server -> agent %d, agent -> server %d; want both > 0 (the connection went over flannel.1)", toAgent, toServer)
	}
}

func twoNodeNetready(t *testing.T, n *Node, a *Agent, ns string) {
	ctx := t.Context()
	const timeout = 30 * time.Second
	logFile := filepath.Join(a.Dir, "netready.log")
	if _, err := a.InstallNetready(ctx, logFile, installArgs(timeout.String(), testbed.ProbeDB)...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := a.UninstallNetready(context.Background()); err != nil {
			t.Error(err)
		}
	})
	checkDefaultPodWatch(t, a.CNIConfDir(), a.DataDir, "https://127.0.0.1:6444")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		chain, err := a.LiveChain(ctx)
		if err == nil && slices.Contains(chain, "netready") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent's containerd loaded %v (err %v), want netready in it", chain, err)
		}
	}
	// A pod on the agent is gated: its ready ADD line in the agent's netready log.
	gated := PodSpec{Namespace: ns, Name: "gated", NodeName: AgentName}
	if err := n.Apply(ctx, gated); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WaitPhase(ctx, ns, gated.Name, 2*time.Minute, "Succeeded"); err != nil {
		t.Fatal(err)
	}
	lines := addLinesIn(t, logFile, ns+"/"+gated.Name)
	if len(lines) != 1 || lines[0].Outcome != "ready" {
		t.Fatalf("the gated pod's ADD lines in %s: %+v, want one ready", logFile, lines)
	}
	t.Logf("pod %s gated on the agent: ADD ready in %.1f ms", gated.Name, lines[0].TotalMS)

	fault, err := n.Bed.BlockRouter(context.Background()) // not t.Context(): canceled before Cleanup lifts the fault
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fault.Unblock() })
	bin := filepath.Join(a.CNIBinDir(), "netready")
	procs := func() []int {
		return testbed.Pids(func(_ int, dir string) bool { return testbed.ProcExe(dir) == bin })
	}
	var gone, ended []float64
	for i := range 2 {
		p := PodSpec{Namespace: ns, Name: podName("deleted", itoa(i)), NodeName: AgentName}
		g, e := deleteWhileWaiting(t, n, p, procs, logFile, timeout)
		gone, ended = append(gone, round1(g.Seconds())), append(ended, float64(e.Milliseconds()))
	}
	figures.SetIn("twonode", "agent_delete_while_waiting", map[string]any{"pod_gone_s": gone, "add_ended_ms": ended})
}

// flannelSubnet reads FLANNEL_SUBNET (the node's pod subnet) from a subnet.env.
func flannelSubnet(path string) (netip.Prefix, error) {
	f, err := os.Open(path)
	if err != nil {
		return netip.Prefix{}, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "FLANNEL_SUBNET="); ok {
			p, err := netip.ParsePrefix(v)
			return p.Masked(), err
		}
	}
	return netip.Prefix{}, fmt.Errorf("%s: no FLANNEL_SUBNET", path)
}

// vxlanCounters count, in the router's forward path, flannel's VXLAN packets (UDP 8472) from the
// server's uplink to the agent's and back.
type vxlanCounters struct{ router *testbed.Netns }

const vxlanTable = "nr_twonode"

func countVXLAN(ctx context.Context, router *testbed.Netns) (*vxlanCounters, error) {
	script := fmt.Sprintf(`table ip %[1]s
delete table ip %[1]s
table ip %[1]s {
	counter to_agent {}
	counter to_server {}
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		ip saddr %[2]s ip daddr %[3]s udp dport 8472 counter name "to_agent"
		ip saddr %[3]s ip daddr %[2]s udp dport 8472 counter name "to_server"
	}
}
`, vxlanTable, testbed.NodeUplink, testbed.Node2Uplink)
	if out, err := router.ExecInput(ctx, script, "nft", "-f", "-"); err != nil {
		return nil, fmt.Errorf("nft counters in the router: %w: %s", err, out)
	}
	return &vxlanCounters{router: router}, nil
}

// read returns the packets counted: server -> agent, agent -> server.
func (c *vxlanCounters) read(ctx context.Context) ([2]int, error) {
	var got [2]int
	for i, name := range []string{"to_agent", "to_server"} {
		out, err := c.router.Exec(ctx, "nft", "-j", "list", "counter", "ip", vxlanTable, name)
		if err != nil {
			return got, fmt.Errorf("nft list counter %s: %w: %s", name, err, out)
		}
		var v struct {
			Nftables []struct {
				Counter *struct {
					Packets int `json:"packets"`
				} `json:"counter"`
			} `json:"nftables"`
		}
		if err := json.Unmarshal(out, &v); err != nil {
			return got, fmt.Errorf("nft -j list counter %s: %w: %s", name, err, out)
		}
		for _, e := range v.Nftables {
			if e.Counter != nil {
				got[i] = e.Counter.Packets
			}
		}
	}
	return got, nil
}

func (c *vxlanCounters) remove() {
	c.router.Exec(context.Background(), "nft", "delete", "table", "ip", vxlanTable)
}

// listenerPeers are the addresses the listening app (-listen) reported connections from.
func listenerPeers(ctx context.Context, n *Node, ns, name string) ([]netip.Addr, error) {
	out, err := n.API.Logs(ctx, ns, name, "app")
	if err != nil {
		return nil, err
	}
	var peers []netip.Addr
	for _, l := range strings.Split(out, "\n") {
		var r struct {
			Peer string `json:"peer"`
		}
		if json.Unmarshal([]byte(l), &r) == nil && r.Peer != "" {
			if ap, err := netip.ParseAddrPort(r.Peer); err == nil {
				peers = append(peers, ap.Addr())
			}
		}
	}
	return peers, nil
}

// loadavg is the host's 1-, 5- and 15-minute load averages.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
