package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/podns"

	"github.com/netready/netready/internal/testns"
)

// The test topology: a pod netns and a peer netns joined by a veth pair, and
// nothing else. The pod routes 10.231.7.0/24 and fd31:231:7::/64 via the
// peer, which forwards but has prohibit routes for them; the pod itself has
// prohibit routes for the .9 prefixes and unreachable routes for the .8 ones.
var (
	pod4, peer4, pod6, peer6 = netip.MustParseAddr("10.231.0.1"), netip.MustParseAddr("10.231.0.2"), netip.MustParseAddr("fd31:231::1"), netip.MustParseAddr("fd31:231::2")
	noHost4, noHost6         = netip.MustParseAddr("10.231.0.99"), netip.MustParseAddr("fd31:231::99") // on-link, never resolves
	remoteDeny4, remoteDeny6 = netip.MustParseAddr("10.231.7.1"), netip.MustParseAddr("fd31:231:7::1")
	localDeny4, localDeny6   = netip.MustParseAddr("10.231.9.1"), netip.MustParseAddr("fd31:231:9::1")
	unreach4, unreach6       = netip.MustParseAddr("10.231.8.1"), netip.MustParseAddr("fd31:231:8::1")
	noRoute4, noRoute6       = netip.MustParseAddr("10.232.0.1"), netip.MustParseAddr("fd32::1")
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2: ", err)
	}
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	testns.Run(t, "ip", args...)
}

// openNetNS is podns.Open, closed when the test ends.
func openNetNS(t *testing.T, path string) *podns.NetNS {
	t.Helper()
	n, err := podns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// topology builds the pod and peer netns and returns their paths.
func topology(t *testing.T) (podPath, peerPath string) {
	t.Helper()
	pod, podPath := testns.New(t, "probe-pod")
	peer, peerPath := testns.New(t, "probe-peer")
	ipCmd(t, "-n", pod, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", peer)
	for _, c := range [][]string{
		{"-n", pod, "addr", "add", pod4.String() + "/24", "dev", "veth0"},
		{"-n", pod, "addr", "add", pod6.String() + "/64", "dev", "veth0", "nodad"},
		{"-n", peer, "addr", "add", peer4.String() + "/24", "dev", "veth0"},
		{"-n", peer, "addr", "add", peer6.String() + "/64", "dev", "veth0", "nodad"},
		{"-n", pod, "link", "set", "lo", "up"},
		{"-n", peer, "link", "set", "lo", "up"},
		{"-n", pod, "link", "set", "veth0", "up"},
		{"-n", peer, "link", "set", "veth0", "up"},
		{"-n", pod, "route", "add", "10.231.7.0/24", "via", peer4.String()},
		{"-n", pod, "-6", "route", "add", "fd31:231:7::/64", "via", peer6.String()},
		{"-n", pod, "route", "add", "prohibit", "10.231.9.0/24"},
		{"-n", pod, "-6", "route", "add", "prohibit", "fd31:231:9::/64"},
		{"-n", pod, "route", "add", "unreachable", "10.231.8.0/24"},
		{"-n", pod, "-6", "route", "add", "unreachable", "fd31:231:8::/64"},
		// A router sends no ICMP errors for what it is not forwarding.
		{"netns", "exec", peer, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"},
		// The checks that expect an ICMP error, each made both ways
		// (Attempt and Start), are more than the kernel's burst of 6
		// before it sends one a second to a host.
		{"netns", "exec", peer, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0"},
		{"-n", peer, "route", "add", "prohibit", "10.231.7.0/24"},
		{"-n", peer, "-6", "route", "add", "prohibit", "fd31:231:7::/64"},
	} {
		ipCmd(t, c...)
	}
	return podPath, peerPath
}

// podWithPeer builds the topology, starts the peer's servers and opens the
// pod's netns once both peer addresses answer.
func podWithPeer(t *testing.T) (*podns.NetNS, peerServers) {
	needRoot(t)
	podPath, peerPath := topology(t)
	srv := startPeer(t, peerPath)
	pod := openNetNS(t, podPath)
	waitUp(t, pod, peer4, peer6)
	return pod, srv
}

// peerServers are the servers in the peer netns, listening on both families.
type peerServers struct {
	web, tls, dns, closed uint16 // ports
}

func startPeer(t *testing.T, peerPath string) peerServers {
	t.Helper()
	// Only the sockets are made inside the netns; they are served from
	// ordinary goroutines.
	var web, tls, closed net.Listener
	var dns net.PacketConn
	err := ns.WithNetNSPath(peerPath, func(ns.NetNS) error {
		var err error
		if web, err = net.Listen("tcp", ":0"); err != nil {
			return err
		}
		if tls, err = net.Listen("tcp", ":0"); err != nil {
			return err
		}
		if closed, err = net.Listen("tcp", ":0"); err != nil {
			return err
		}
		dns, err = net.ListenPacket("udp", ":0")
		return err
	})
	for _, c := range []interface{ Close() error }{web, tls, closed, dns} {
		if c != nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	var s peerServers
	s.web, s.tls, s.dns = addrPort(t, web.Addr()).Port(), addrPort(t, tls.Addr()).Port(), addrPort(t, dns.LocalAddr()).Port()
	s.closed = addrPort(t, closed.Addr()).Port()
	closed.Close() // same port, both families, now shut: the peer answers with RST and ICMP port unreachable
	startHTTP(t, web, false)
	startHTTP(t, tls, true)
	startDNS(t, dns)
	return s
}

// waitUp waits for the veth to carry traffic: its qdisc is attached some time
// after the link comes up, and what is sent before is dropped.
func waitUp(t *testing.T, s Sockets, targets ...netip.Addr) {
	t.Helper()
	for _, a := range targets {
		p, err := New(icmpProbe(a), s)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			err := p.Attempt(ctx)
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never answered: %v", a, err)
			}
		}
	}
}

func TestNetNS(t *testing.T) {
	pod, srv := podWithPeer(t)

	const short = 500 * time.Millisecond
	ap := netip.AddrPortFrom
	var checks []check
	for _, f := range []struct {
		name                                                  string
		peer, noHost, remoteDeny, localDeny, unreach, noRoute netip.Addr
		deniedSYN                                             string // the kernel's errno for a SYN refused by ICMP differs
	}{
		{"v4", peer4, noHost4, remoteDeny4, localDeny4, unreach4, noRoute4, "no route to host"},
		{"v6", peer6, noHost6, remoteDeny6, localDeny6, unreach6, noRoute6, "administratively prohibited"},
	} {
		checks = append(checks,
			check{name: f.name + " icmp ok", probe: icmpProbe(f.peer)},
			check{name: f.name + " icmp no host", probe: icmpProbe(f.noHost), timeout: short, wantErr: "no echo reply", is: context.DeadlineExceeded},
			check{name: f.name + " icmp local prohibit route", probe: icmpProbe(f.localDeny), wantErr: "administratively prohibited (permission denied)", is: syscall.EACCES, fast: true},
			check{name: f.name + " icmp local unreachable route", probe: icmpProbe(f.unreach), wantErr: "no route to host", is: syscall.EHOSTUNREACH, fast: true},
			check{name: f.name + " icmp no route", probe: icmpProbe(f.noRoute), wantErr: "network is unreachable", is: syscall.ENETUNREACH, fast: true},
			check{name: f.name + " icmp prohibited by router", probe: icmpProbe(f.remoteDeny), wantErr: "rejected by " + f.peer.String() + " (ICMP communication", is: syscall.EACCES, fast: true},
			check{name: f.name + " tcp ok", probe: tcpProbe(ap(f.peer, srv.web), false)},
			check{name: f.name + " tcp refused", probe: tcpProbe(ap(f.peer, srv.closed), false), wantErr: "connection refused", is: syscall.ECONNREFUSED, fast: true},
			check{name: f.name + " tcp refused ok", probe: tcpProbe(ap(f.peer, srv.closed), true)},
			check{name: f.name + " tcp no host", probe: tcpProbe(ap(f.noHost, 80), false), timeout: short, wantErr: "i/o timeout", is: context.DeadlineExceeded},
			check{name: f.name + " tcp local prohibit route", probe: tcpProbe(ap(f.localDeny, 80), true), wantErr: "administratively prohibited", is: syscall.EACCES, fast: true},
			check{name: f.name + " tcp prohibited by router", probe: tcpProbe(ap(f.remoteDeny, 80), true), wantErr: f.deniedSYN, fast: true},
			check{name: f.name + " http ok", probe: httpProbe(config.HTTP, ap(f.peer, srv.web), "/", 200, 399)},
			check{name: f.name + " http 503", probe: httpProbe(config.HTTP, ap(f.peer, srv.web), "/code/503", 200, 399), wantErr: "HTTP 503, want 200-399"},
			check{name: f.name + " https ok", probe: httpProbe(config.HTTPS, ap(f.peer, srv.tls), "/", 200, 399)},
			check{name: f.name + " dns A", probe: dnsProbe(ap(f.peer, srv.dns), "ok.test.", "A")},
			check{name: f.name + " dns AAAA", probe: dnsProbe(ap(f.peer, srv.dns), "ok.test.", "AAAA")},
			check{name: f.name + " dns closed port", probe: dnsProbe(ap(f.peer, srv.closed), "ok.test.", "A"), wantErr: "connection refused", is: syscall.ECONNREFUSED, fast: true},
			check{name: f.name + " dns no host", probe: dnsProbe(ap(f.noHost, 53), "ok.test.", "A"), timeout: short, wantErr: "DNS: no response", is: context.DeadlineExceeded},
			check{name: f.name + " dns local unreachable route", probe: dnsProbe(ap(f.unreach, 53), "ok.test.", "A"), wantErr: "no route to host", is: syscall.EHOSTUNREACH, fast: true},
		)
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) { c.run(t, pod) })
	}

	t.Run("concurrent", func(t *testing.T) {
		for _, pr := range []config.Probe{icmpProbe(peer4), icmpProbe(peer6), tcpProbe(ap(peer4, srv.web), false), dnsProbe(ap(peer6, srv.dns), "ok.test.", "A")} {
			t.Run(pr.URL, func(t *testing.T) { attemptConcurrently(t, pr, pod, 16, 8) })
		}
	})
}

// TestNetNSIsolation shows that sockets live in the pod netns: a server that
// listens on the host's loopback is out of the pod's reach.
func TestNetNSIsolation(t *testing.T) {
	needRoot(t)
	name, podPath := testns.New(t, "probe-pod")
	ipCmd(t, "-n", name, "link", "set", "lo", "up")
	pod := openNetNS(t, podPath)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			ln := f.listen(t)
			startSilent(t, ln)
			pr := tcpProbe(addrPort(t, ln.Addr()), false)
			t.Run("host", func(t *testing.T) { check{probe: pr}.run(t, localSockets{}) })
			t.Run("pod", func(t *testing.T) {
				check{probe: pr, wantErr: "connection refused", is: syscall.ECONNREFUSED, fast: true}.run(t, pod)
			})
		})
	}
}

// TestICMPLoopback pings the host's own loopback: raw sockets need root, but
// no netns.
func TestICMPLoopback(t *testing.T) {
	needRoot(t)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			check{probe: icmpProbe(f.lo)}.run(t, localSockets{})
			attemptConcurrently(t, icmpProbe(f.lo), localSockets{}, 8, 8)
		})
	}
}

// TestNetNSRejects shows that the probes tell a firewall's reject apart
// from other failures: the peer forwards 10.231.6.0/24 and fd31:231:6::/64
// to a veth of its own, and an nft forward chain there rejects .1 with
// host-prohibited (firewalld's iptables backend), .2 with nft's default
// (port unreachable) and .3 with icmpx admin-prohibited (firewalld's
// nftables backend). The first attempt of a prober learns that ICMP errors
// come back; from the next on, each names its sender and type.
func TestNetNSRejects(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft: ", err)
	}
	podPath, peerPath := topology(t)
	pod, peer := filepath.Base(podPath), filepath.Base(peerPath)
	for _, c := range [][]string{
		{"-n", peer, "link", "add", "d0", "type", "veth", "peer", "name", "d1"},
		{"-n", peer, "link", "set", "d0", "up"},
		{"-n", peer, "link", "set", "d1", "up"},
		{"-n", peer, "route", "add", "10.231.6.0/24", "dev", "d0"},
		{"-n", peer, "-6", "route", "add", "fd31:231:6::/64", "dev", "d0"},
		{"-n", pod, "route", "add", "10.231.6.0/24", "via", peer4.String()},
		{"-n", pod, "-6", "route", "add", "fd31:231:6::/64", "via", peer6.String()},
		// The kernel sends a host at most one ICMP error a second (after a
		// burst of 6): a probe then sees most attempts time out, which the
		// gate's own tests show. Here each attempt should get its error.
		{"netns", "exec", peer, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0"},
	} {
		ipCmd(t, c...)
	}
	nftRules := `table inet nr_reject {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip daddr 10.231.6.1 reject with icmp type host-prohibited
		ip daddr 10.231.6.2 reject
		ip daddr 10.231.6.3 reject with icmpx type admin-prohibited
		ip6 daddr fd31:231:6::1 reject with icmpv6 type admin-prohibited
		ip6 daddr fd31:231:6::2 reject
		ip6 daddr fd31:231:6::3 reject with icmpx type admin-prohibited
	}
}
`
	if _, err := testns.CommandInput(context.Background(), nftRules, "ip", "netns", "exec", peer, "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	n := openNetNS(t, podPath)
	waitUp(t, n, peer4, peer6)

	ap := netip.AddrPortFrom
	for _, f := range []struct {
		name      string
		peer      netip.Addr
		net       string
		hostProhi string // what .1 says
		adminProh string // what .3 says
	}{
		{"v4", peer4, "10.231.6.", "host administratively prohibited", "communication administratively prohibited"},
		{"v6", peer6, "fd31:231:6::", "communication with destination administratively prohibited", "communication with destination administratively prohibited"},
	} {
		a := func(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("%s%d", f.net, i)) }
		for _, c := range []struct {
			name string
			pr   config.Probe
			want string
		}{
			{"tcp host-prohibited", tcpProbe(ap(a(1), 5432), false), "rejected by " + f.peer.String() + " (ICMP " + f.hostProhi + ")"},
			{"tcp default reject", tcpProbe(ap(a(2), 5432), false), "rejected by " + f.peer.String() + " (ICMP port unreachable)"},
			{"tcp admin-prohibited", tcpProbe(ap(a(3), 5432), false), "rejected by " + f.peer.String() + " (ICMP " + f.adminProh + ")"},
			{"http host-prohibited", httpProbe(config.HTTP, ap(a(1), 80), "/", 200, 399), "rejected by " + f.peer.String() + " (ICMP " + f.hostProhi + ")"},
			{"dns admin-prohibited", dnsProbe(ap(a(3), 53), "ok.test.", "A"), "rejected by " + f.peer.String() + " (ICMP " + f.adminProh + ")"},
			{"dns default reject", dnsProbe(ap(a(2), 53), "ok.test.", "A"), "rejected by " + f.peer.String() + " (ICMP port unreachable)"},
			{"icmp host-prohibited", icmpProbe(a(1)), "rejected by " + f.peer.String() + " (ICMP " + f.hostProhi + ")"},
			{"icmp default reject", icmpProbe(a(2)), "rejected by " + f.peer.String() + " (ICMP port unreachable)"},
		} {
			t.Run(f.name+" "+c.name, func(t *testing.T) {
				p, err := New(c.pr, n)
				if err != nil {
					t.Fatal(err)
				}
				// Three attempts, the last reject among them checked: the first may fail
				// before the error queue is on (TCP, HTTP, DNS), and on a loaded host the
				// kernel's global ICMP limit (icmp_msgs_per_sec, not lifted above) can
				// swallow one error, which the attempt then sees as no answer.
				var last error
				for i := range 3 {
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					start := time.Now()
					err := p.Attempt(ctx)
					cancel()
					t.Logf("attempt %d: %v after %v", i, err, time.Since(start).Round(time.Microsecond))
					if err == nil {
						t.Fatal("Attempt succeeded through the reject")
					}
					if ie := (*ICMPError)(nil); errors.As(err, &ie) || last == nil {
						last = err
					}
				}
				var ie *ICMPError
				if !errors.As(last, &ie) || !ie.Reject || ie.From != f.peer || last.Error() != c.want {
					t.Fatalf("no attempt of three ended %q as an *ICMPError with Reject; the last reject or error: %v (%T)", c.want, last, last)
				}
				if errors.Unwrap(last) == nil {
					t.Errorf("%v unwraps to nothing, want its errno", last)
				}
			})
		}
	}

	// The ready path stays as it was: no error queue on a prober that
	// never failed, and a refused port is the target's own answer.
	t.Run("closed port is not a reject", func(t *testing.T) {
		srv := startPeer(t, peerPath)
		for _, pr := range []config.Probe{tcpProbe(ap(peer4, srv.closed), false), dnsProbe(ap(peer4, srv.closed), "ok.test.", "A")} {
			p, _ := New(pr, n)
			refused := 0
			for range 3 {
				ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				err := p.Attempt(ctx)
				cancel()
				var ie *ICMPError
				switch {
				case errors.As(err, &ie) && ie.Reject:
					t.Errorf("%s: %v, want connection refused, not a reject", pr, err)
				case errors.Is(err, syscall.ECONNREFUSED):
					refused++
				}
			}
			if refused == 0 {
				t.Errorf("%s: never refused", pr)
			}
		}
	})
}

// TestTCPAttemptsShareOneEpollSet: TCP attempts in flight are watched in
// one epoll set of the process's, which is closed when the last leaves; a
// cancelled attempt returns at once, and a socket still connecting is not
// taken for connected when it is told of an event (a reused number's).
func TestTCPAttemptsShareOneEpollSet(t *testing.T) {
	needRoot(t)
	podPath, _ := topology(t)
	pod := openNetNS(t, podPath)
	waitUp(t, pod, peer4)

	epolls := func() int {
		t.Helper()
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range ents {
			if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && l == "anon_inode:[eventpoll]" {
				n++
			}
		}
		return n
	}
	users := func() int {
		watchSet.Lock()
		defer watchSet.Unlock()
		return watchSet.users
	}
	base := epolls() // Go's own poller

	p, err := New(tcpProbe(netip.AddrPortFrom(noHost4, 80), false), pod)
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errs := make(chan error, n)
	for range n {
		go func() { errs <- p.Attempt(ctx) }()
	}
	for deadline := time.Now().Add(5 * time.Second); users() < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d attempts watched after 5s", users(), n)
		}
	}
	if got := epolls() - base; got != 1 {
		t.Errorf("%d attempts in flight: %d epoll sets of netready's, want 1", n, got)
	}

	// A wake-up for a socket still in SYN_SENT is not an answer.
	fd, err := pod.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP)
	if err != nil {
		t.Fatal(err)
	}
	sa, _ := sockaddr(fd, netip.AddrPortFrom(noHost4, 80))
	if err := unix.Connect(fd, sa); err != unix.EINPROGRESS {
		t.Fatalf("connect: %v, want EINPROGRESS", err)
	}
	c := &tcpConn{fd: fd, dst: netip.AddrPortFrom(noHost4, 80), re: &recvErr{}}
	if done, err := c.handshake(true); done {
		t.Errorf("handshake of a socket still connecting: done, %v", err)
	}
	unix.Close(fd)

	start := time.Now()
	cancel()
	for range n {
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled attempt: %v, want context.Canceled", err)
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("cancelled attempts took %v to return", took)
	}
	if got := epolls(); got != base || users() != 0 {
		t.Errorf("after the last attempt: %d epoll sets (%d before), %d watched; want the set closed", got, base, users())
	}
}

// Start's attempts use the socket of the attempt closed before them again,
// disconnected: a connect to AF_UNSPEC, and its ECONNRESET read away. A
// socket that never got an answer, one that was answered and one whose
// prober has the error queue armed (not kept) all leave the next attempt
// its own outcome.
func TestStartRecyclesSockets(t *testing.T) {
	pod, srv := podWithPeer(t)
	spare := func(p Starter) []int {
		tp := p.(*tcpProber)
		tp.mu.Lock()
		defer tp.mu.Unlock()
		return append([]int(nil), tp.spare...)
	}
	for _, f := range []struct {
		name         string
		peer, noHost netip.Addr
	}{{"v4", peer4, noHost4}, {"v6", peer6, noHost6}} {
		t.Run(f.name, func(t *testing.T) {
			// Never answered (the neighbour never resolves): closed in flight,
			// the disconnect's ECONNRESET left on it. One attempt stays in
			// flight throughout, as at a gate's in-flight cap: the epoll set
			// lives on, and a kept socket is still in it.
			p := mustStarter(t, tcpProbe(netip.AddrPortFrom(f.noHost, 80), false), pod)
			hold, err := p.Start(func() {})
			if hold == nil {
				t.Fatalf("attempt to a host that never answers: ended at once with %v", err)
			}
			var used []int
			for i := range 3 {
				a, err := p.Start(func() {})
				if a == nil {
					t.Fatalf("attempt %d to a host that never answers: ended at once with %v", i, err)
				}
				used = append(used, a.c.fd)
				a.Close()
			}
			if s := spare(p); len(s) != 1 || used[1] != used[0] || used[2] != used[0] {
				t.Errorf("attempts used sockets %v and keep %v: want one socket, used again", used, s)
			}
			// With the error queue armed, a socket is closed, not kept.
			p.(*tcpProber).recvErr.on.Store(true)
			if a, err := p.Start(func() {}); a == nil {
				t.Fatalf("armed attempt to a host that never answers: ended at once with %v", err)
			} else {
				a.Close()
			}
			if s := spare(p); len(s) != 0 {
				t.Errorf("a prober with the error queue armed keeps sockets %v", s)
			}
			if _, err := unix.FcntlInt(uintptr(used[0]), unix.F_GETFD, 0); err != unix.EBADF {
				t.Errorf("socket %d of an armed prober's attempt is still open after Close", used[0])
			}
			hold.Close()

			// Answered, each on the socket the one before it used.
			q := mustStarter(t, tcpProbe(netip.AddrPortFrom(f.peer, srv.web), false), pod)
			var kept []int
			for i := range 3 {
				if err := await(q, 2*time.Second); err != nil {
					t.Fatalf("attempt %d to a listening port: %v", i, err)
				}
				kept = append(kept, spare(q)...)
			}
			if len(kept) != 3 || kept[1] != kept[0] || kept[2] != kept[0] {
				t.Errorf("sockets kept after each answered attempt: %v, want the same one each time", kept)
			}

			// Refused, each attempt: no reset left by an earlier one.
			r := mustStarter(t, tcpProbe(netip.AddrPortFrom(f.peer, srv.closed), false), pod)
			for i := range 3 {
				if err := await(r, 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("attempt %d to a closed port: %v, want connection refused", i, err)
				}
			}

			for _, s := range []Starter{p, q, r} {
				s.Close()
			}
			for _, fd := range []int{kept[0]} {
				if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
					t.Errorf("socket %d kept for reuse is still open after Close", fd)
				}
			}
		})
	}
}

func mustStarter(t *testing.T, pr config.Probe, s Sockets) Starter {
	t.Helper()
	p, err := New(pr, s)
	if err != nil {
		t.Fatal(err)
	}
	return p.(Starter)
}
