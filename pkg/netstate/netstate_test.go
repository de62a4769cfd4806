package netstate

import (
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/netready/netready/internal/testns"
)

// testNetNS makes a netns with a veth pair (eth0 inside, its peer in a
// second netns) and removes both when the test ends.
func testNetNS(t *testing.T) (pod, peer string) {
	t.Helper()
	pod, _ = testns.New(t, "netstate-pod")
	peer, _ = testns.New(t, "netstate-peer")
	run(t, "ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "veth0", "netns", peer)
	run(t, "ip", "-n", pod, "link", "set", "lo", "up")
	run(t, "ip", "-n", peer, "link", "set", "lo", "up")
	return pod, peer
}

func run(t *testing.T, args ...string) {
	t.Helper()
	testns.Run(t, args[0], args[1:]...)
}

func open(t *testing.T, name string) *NetNS {
	t.Helper()
	nsh, err := ns.GetNS(filepath.Join(testns.Dir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	var n *NetNS
	err = nsh.Do(func(ns.NetNS) error {
		n, err = OpenHere()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

func wantErr(t *testing.T, what string, err error, substr string) {
	t.Helper()
	switch {
	case substr == "" && err != nil:
		t.Errorf("%s: %v, want ready", what, err)
	case substr != "" && (err == nil || !strings.Contains(err.Error(), substr)):
		t.Errorf("%s: %v, want an error containing %q", what, err, substr)
	}
}

func TestLinkAndAddress(t *testing.T) {
	pod, peer := testNetNS(t)
	n := open(t, pod)
	ip := netip.MustParseAddr("10.99.0.2")
	wantErr(t, "missing link", n.LinkUp("eth9"), "no such link")
	wantErr(t, "down link", n.LinkUp("eth0"), "administratively down")
	run(t, "ip", "-n", pod, "link", "set", "eth0", "up")
	wantErr(t, "peer down", n.LinkUp("eth0"), "no carrier")
	run(t, "ip", "-n", peer, "link", "set", "veth0", "up")
	wantErr(t, "both up", n.LinkUp("eth0"), "")
	wantErr(t, "loopback", n.LinkUp("lo"), "")

	wantErr(t, "missing address", n.AddrReady("eth0", ip), "not on the link")
	run(t, "ip", "-n", pod, "addr", "add", "10.99.0.2/24", "dev", "eth0")
	wantErr(t, "address", n.AddrReady("eth0", ip), "")
}

func TestIPv6AddressTentativeUntilDAD(t *testing.T) {
	pod, peer := testNetNS(t)
	n := open(t, pod)
	run(t, "ip", "netns", "exec", pod, "sysctl", "-qw", "net.ipv6.conf.eth0.dad_transmits=1")
	run(t, "ip", "netns", "exec", pod, "sysctl", "-qw", "net.ipv6.neigh.eth0.retrans_time_ms=300")
	run(t, "ip", "-n", peer, "link", "set", "veth0", "up")
	run(t, "ip", "-n", pod, "link", "set", "eth0", "up")
	run(t, "ip", "-n", pod, "addr", "add", "fd99::2/64", "dev", "eth0")
	ip := netip.MustParseAddr("fd99::2")
	wantErr(t, "during DAD", n.AddrReady("eth0", ip), "tentative")
	deadline := time.Now().Add(5 * time.Second)
	for n.AddrReady("eth0", ip) != nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	wantErr(t, "after DAD", n.AddrReady("eth0", ip), "")
}

func TestRoutes(t *testing.T) {
	pod, peer := testNetNS(t)
	n := open(t, pod)
	run(t, "ip", "-n", peer, "link", "set", "veth0", "up")
	run(t, "ip", "-n", pod, "link", "set", "eth0", "up")
	run(t, "ip", "-n", pod, "addr", "add", "10.99.0.2/24", "dev", "eth0")
	db := netip.MustParseAddr("192.0.2.10")

	wantErr(t, "no default v4", n.DefaultRoute(true), "no IPv4 default route")
	wantErr(t, "no route", n.RouteTo(db), "network is unreachable")
	for _, tc := range []struct{ typ, want string }{
		{"blackhole", "blackhole"}, {"prohibit", "prohibit"}, {"unreachable", "unreachable"},
	} {
		run(t, "ip", "-n", pod, "route", "replace", tc.typ, "192.0.2.0/24")
		wantErr(t, tc.typ, n.RouteTo(db), tc.want+" route")
	}
	run(t, "ip", "-n", pod, "route", "del", "192.0.2.0/24")
	run(t, "ip", "-n", pod, "route", "add", "default", "via", "10.99.0.1")
	wantErr(t, "default v4", n.DefaultRoute(true), "")
	wantErr(t, "no default v6", n.DefaultRoute(false), "no IPv6 default route")
	wantErr(t, "routed", n.RouteTo(db), "")
	gws, err := n.Gateways()
	if err != nil || len(gws) != 1 || gws[0] != netip.MustParseAddr("10.99.0.1") {
		t.Errorf("Gateways()=%v, %v; want [10.99.0.1]", gws, err)
	}
	links, err := n.Links()
	if err != nil || len(links) != 1 || links[0].Name != "eth0" || len(links[0].Addrs) != 1 ||
		links[0].Addrs[0] != netip.MustParseAddr("10.99.0.2") {
		t.Errorf("Links()=%v, %v; want eth0 with 10.99.0.2", links, err)
	}
}

func TestWatchNetNSWakesOnRouteChange(t *testing.T) {
	pod, _ := testNetNS(t)
	notify := make(chan struct{}, 1)
	w, err := WatchNetNS(sockets{t, pod}, notify)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	select {
	case <-notify:
		t.Fatal("woke before anything changed")
	case <-time.After(50 * time.Millisecond):
	}
	run(t, "ip", "-n", pod, "route", "add", "blackhole", "192.0.2.0/24")
	select {
	case <-notify:
	case <-time.After(5 * time.Second):
		t.Fatal("no wake-up after a route was added in the netns")
	}
}

func TestWatchNodeWakesOnNftablesChange(t *testing.T) {
	node, _ := testNetNS(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft (scripts/test-deps.sh installs it)")
	}
	// WatchNode watches the calling netns: run it from inside the test node.
	notify := make(chan struct{}, 1)
	var w *Watcher
	err := withNetNS(t, node, func() (err error) { w, err = WatchNode(notify); return err })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	run(t, "ip", "netns", "exec", node, "nft", "add", "table", "inet", "nrtest")
	select {
	case <-notify:
	case <-time.After(5 * time.Second):
		t.Fatal("no wake-up after an nftables table was added in the node netns")
	}
}

// A muted node watcher wakes nobody on a route or an nftables change (the
// kernel drops the messages); unmuted, it wakes on the next one again.
func TestWatchNodeMute(t *testing.T) {
	node, _ := testNetNS(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft (scripts/test-deps.sh installs it)")
	}
	notify := make(chan struct{}, 1)
	var w *Watcher
	if err := withNetNS(t, node, func() (err error) { w, err = WatchNode(notify); return err }); err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Mute(true); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "-n", node, "route", "add", "blackhole", "192.0.2.0/24")
	run(t, "ip", "netns", "exec", node, "nft", "add", "table", "inet", "nrtest")
	select {
	case <-notify:
		t.Fatal("a muted watcher woke on a route and an nftables change")
	case <-time.After(300 * time.Millisecond):
	}
	if err := w.Mute(false); err != nil {
		t.Fatal(err)
	}
	for _, change := range [][]string{
		{"ip", "-n", node, "route", "add", "blackhole", "198.51.100.0/24"},
		{"ip", "netns", "exec", node, "nft", "add", "table", "inet", "nrtest2"},
	} {
		run(t, change...)
		select {
		case <-notify:
		case <-time.After(5 * time.Second):
			t.Fatalf("no wake-up after %v once unmuted", change)
		}
	}
}
