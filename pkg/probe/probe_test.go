package probe

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/netready/netready/internal/testns"
	"github.com/netready/netready/pkg/config"
)

// family is one address family's loopback.
type family struct {
	name, tcp, udp string
	lo             netip.Addr
}

var families = []family{
	{"v4", "tcp4", "udp4", netip.MustParseAddr("127.0.0.1")},
	{"v6", "tcp6", "udp6", netip.IPv6Loopback()},
}

func (f family) listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen(f.tcp, netip.AddrPortFrom(f.lo, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func (f family) listenPacket(t *testing.T) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket(f.udp, netip.AddrPortFrom(f.lo, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// closedPorts returns a TCP and a UDP port that nothing listens on.
func (f family) closedPorts(t *testing.T) (tcp, udp netip.AddrPort) {
	t.Helper()
	ln, pc := f.listen(t), f.listenPacket(t)
	tcp, udp = addrPort(t, ln.Addr()), addrPort(t, pc.LocalAddr())
	ln.Close()
	pc.Close()
	return tcp, udp
}

// loopbackServers are the servers the unprivileged tests probe.
type loopbackServers struct {
	web, tls, silent, dns, quiet, closedTCP, closedUDP netip.AddrPort
}

func startLoopback(t *testing.T, f family) loopbackServers {
	var s loopbackServers
	web, tls, silent := f.listen(t), f.listen(t), f.listen(t)
	s.web, s.tls, s.silent = addrPort(t, web.Addr()), addrPort(t, tls.Addr()), addrPort(t, silent.Addr())
	startHTTP(t, web, false)
	startHTTP(t, tls, true)
	startSilent(t, silent)
	dns, quiet := f.listenPacket(t), f.listenPacket(t)
	s.dns, s.quiet = addrPort(t, dns.LocalAddr()), addrPort(t, quiet.LocalAddr())
	startDNS(t, dns)
	s.closedTCP, s.closedUDP = f.closedPorts(t)
	return s
}

func TestAttempt(t *testing.T) {
	const short = 300 * time.Millisecond
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			s := startLoopback(t, f)
			checks := []check{
				{name: "tcp ok", probe: tcpProbe(s.web, false)},
				{name: "tcp refused", probe: tcpProbe(s.closedTCP, false), wantErr: "connection refused", is: syscall.ECONNREFUSED, fast: true},
				{name: "tcp refused ok", probe: tcpProbe(s.closedTCP, true)},
				{name: "tcp refused ok open", probe: tcpProbe(s.web, true)},
				{name: "http 200", probe: httpProbe(config.HTTP, s.web, "/", 200, 399)},
				{name: "http defaults", probe: httpProbe(config.HTTP, s.web, "", 0, 0)},
				{name: "http 503", probe: httpProbe(config.HTTP, s.web, "/code/503", 200, 399), wantErr: "HTTP 503, want 200-399", fast: true},
				{name: "http 204 in range", probe: httpProbe(config.HTTP, s.web, "/code/204", 200, 204)},
				{name: "http 301 out of range", probe: httpProbe(config.HTTP, s.web, "/code/301", 200, 299), wantErr: "HTTP 301, want 200-299"},
				{name: "http 200 want 204", probe: httpProbe(config.HTTP, s.web, "/", 204, 204), wantErr: "HTTP 200, want 204"},
				{name: "http query", probe: httpProbe(config.HTTP, s.web, "/code/204?x=1", 204, 204)},
				{name: "http refused", probe: httpProbe(config.HTTP, s.closedTCP, "/", 200, 399), wantErr: "connection refused", is: syscall.ECONNREFUSED, fast: true},
				{name: "http no response", probe: httpProbe(config.HTTP, s.silent, "/", 200, 399), timeout: short, wantErr: "HTTP: no response", is: context.DeadlineExceeded},
				{name: "https ok", probe: httpProbe(config.HTTPS, s.tls, "/", 200, 399)},
				{name: "https 503", probe: httpProbe(config.HTTPS, s.tls, "/code/503", 200, 399), wantErr: "HTTP 503, want 200-399"},
				{name: "https to plain http", probe: httpProbe(config.HTTPS, s.web, "/", 200, 399), wantErr: "TLS handshake: ", fast: true},
				{name: "https no handshake", probe: httpProbe(config.HTTPS, s.silent, "/", 200, 399), timeout: short, wantErr: "TLS handshake: i/o timeout", is: context.DeadlineExceeded},
				{name: "dns A", probe: dnsProbe(s.dns, "ok.test.", "A")},
				{name: "dns AAAA", probe: dnsProbe(s.dns, "ok.test.", "AAAA")},
				{name: "dns default type", probe: dnsProbe(s.dns, "ok.test", "")},
				{name: "dns NXDOMAIN answers", probe: dnsProbe(s.dns, "nx.test.", "A")},
				{name: "dns wrong ID ignored", probe: dnsProbe(s.dns, "spoof.test.", "A")},
				{name: "dns other question", probe: dnsProbe(s.dns, "wrong.test.", "A"), wantErr: "DNS: malformed response (NOERROR): question other.test. A, want wrong.test. A"},
				{name: "dns no question", probe: dnsProbe(s.dns, "noq.test.", "A"), wantErr: "DNS: malformed response (REFUSED): no question"},
				{name: "dns closed port", probe: dnsProbe(s.closedUDP, "ok.test.", "A"), wantErr: "connection refused", is: syscall.ECONNREFUSED, fast: true},
				{name: "dns server ignores", probe: dnsProbe(s.dns, "silent.test.", "A"), timeout: short, wantErr: "DNS: no response", is: context.DeadlineExceeded},
				{name: "dns socket never reads", probe: dnsProbe(s.quiet, "ok.test.", "A"), timeout: short, wantErr: "DNS: no response", is: os.ErrDeadlineExceeded},
			}
			for _, c := range checks {
				t.Run(c.name, func(t *testing.T) { c.run(t, localSockets{}) })
			}
		})
	}
}

func TestAttemptCancel(t *testing.T) {
	f := families[0]
	s := startLoopback(t, f)
	for _, c := range []struct {
		name  string
		probe config.Probe
	}{
		{"http", httpProbe(config.HTTP, s.silent, "/", 200, 399)},
		{"https", httpProbe(config.HTTPS, s.silent, "/", 200, 399)},
		{"dns", dnsProbe(s.quiet, "ok.test.", "A")},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := New(c.probe, localSockets{})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			const after = 100 * time.Millisecond
			time.AfterFunc(after, cancel)
			start := time.Now()
			err = p.Attempt(ctx)
			if took := time.Since(start); took > after+200*time.Millisecond {
				t.Errorf("Attempt returned %v after cancel", took-after)
			}
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Attempt: %v, want context.Canceled", err)
			}
		})
	}
}

func TestConcurrentAttempts(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			s := startLoopback(t, f)
			for _, c := range []struct {
				name  string
				probe config.Probe
				n     int // attempts per worker
			}{
				{"tcp", tcpProbe(s.web, false), 8},
				{"tcp refused ok", tcpProbe(s.closedTCP, true), 8},
				{"http", httpProbe(config.HTTP, s.web, "/", 200, 399), 8},
				{"https", httpProbe(config.HTTPS, s.tls, "/", 200, 399), 1}, // handshakes are slow under -race
				{"dns", dnsProbe(s.dns, "ok.test.", "A"), 8},
			} {
				t.Run(c.name, func(t *testing.T) { attemptConcurrently(t, c.probe, localSockets{}, 16, c.n) })
			}
		})
	}
}

// attemptConcurrently runs workers goroutines making n attempts each on one
// Prober; every attempt must succeed.
func attemptConcurrently(t *testing.T, pr config.Probe, s Sockets, workers, n int) {
	t.Helper()
	p, err := New(pr, s)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers*n)
	for range workers {
		wg.Go(func() {
			for range n {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				errs <- p.Attempt(ctx)
				cancel()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Attempt: %v", err)
		}
	}
}

// TestNoLeak checks that attempts, successful or not, close their sockets.
func TestNoLeak(t *testing.T) {
	f := families[0]
	s := startLoopback(t, f)
	probes := []config.Probe{
		tcpProbe(s.web, false),
		tcpProbe(s.closedTCP, false),
		dnsProbe(s.dns, "ok.test.", "A"),
		dnsProbe(s.quiet, "ok.test.", "A"),
		dnsProbe(s.closedUDP, "ok.test.", "A"),
	}
	var ps []Prober
	for _, pr := range probes {
		p, err := New(pr, localSockets{})
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	attempt := func(p Prober) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		defer cancel()
		p.Attempt(ctx)
	}
	for _, p := range ps {
		attempt(p) // let the runtime open what it keeps open (epoll, ...)
	}
	before := testns.OpenFDs(t)
	for range 20 {
		for _, p := range ps {
			attempt(p)
		}
	}
	if after := testns.OpenFDs(t); after != before {
		t.Errorf("%d file descriptors open before the attempts, %d after", before, after)
	}
}

// TestNewErrors: New checks nothing config.ParseProbe checked; what is left
// is a Probe no parser made.
func TestNewErrors(t *testing.T) {
	v4 := netip.MustParseAddr("192.0.2.1")
	for _, c := range []struct {
		name    string
		probe   config.Probe
		wantErr string
	}{
		{"unknown scheme", config.Probe{Scheme: "ftp", Addr: v4, Port: 21, URL: "ftp://192.0.2.1:21"}, `probe ftp://192.0.2.1:21: unknown scheme "ftp"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := New(c.probe, localSockets{})
			if err == nil || err.Error() != c.wantErr {
				t.Fatalf("New: %v, want %q", err, c.wantErr)
			}
		})
	}
}

// TestHTTPRequest pins the bytes http.Request.Write makes of a parsed probe.
func TestHTTPRequest(t *testing.T) {
	for _, c := range []struct{ url, want string }{
		{"http://192.0.2.1", "GET / HTTP/1.1\r\nHost: 192.0.2.1\r\nUser-Agent: netready\r\nConnection: close\r\nAccept: */*\r\n\r\n"},
		{"https://[fd00::1]:8443/healthz?x=1&status=204", "GET /healthz?x=1 HTTP/1.1\r\nHost: [fd00::1]:8443\r\nUser-Agent: netready\r\nConnection: close\r\nAccept: */*\r\n\r\n"},
		{"http://192.0.2.1:8080/a%20b", "GET /a%20b HTTP/1.1\r\nHost: 192.0.2.1:8080\r\nUser-Agent: netready\r\nConnection: close\r\nAccept: */*\r\n\r\n"},
	} {
		t.Run(c.url, func(t *testing.T) {
			h, err := newHTTP(mustProbe(c.url), localSockets{})
			if err != nil {
				t.Fatal(err)
			}
			if string(h.req) != c.want {
				t.Errorf("request\n%q, want\n%q", h.req, c.want)
			}
		})
	}
}

// Packets for TestEchoAnswer.
var (
	target  = netip.MustParseAddr("10.0.0.1")
	router  = netip.MustParseAddr("10.0.0.254")
	target6 = netip.MustParseAddr("fd00::1")
	router6 = netip.MustParseAddr("fd00::fe")
	self    = netip.MustParseAddr("10.0.0.2")
	self6   = netip.MustParseAddr("fd00::2")
)

func echoPacket(typ byte, id, seq uint16) []byte {
	b := []byte{typ, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	return append(b, echoPayload...)
}

func icmpErrPacket(typ, code byte, quoted []byte) []byte {
	return append([]byte{typ, code, 0, 0, 0, 0, 0, 0}, quoted...)
}

func ip4Packet(src, dst netip.Addr, proto byte, payload []byte) []byte {
	h := make([]byte, 20)
	h[0], h[8], h[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	return append(h, payload...)
}

func ip6Packet(src, dst netip.Addr, nh byte, payload []byte) []byte {
	h := make([]byte, 40)
	h[0], h[6], h[7] = 0x60, nh, 64
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	s, d := src.As16(), dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(h, payload...)
}

func TestEchoAnswer(t *testing.T) {
	const id, seq = 0x1234, 0x5678
	req4 := ip4Packet(self, target, 1, echoPacket(8, id, seq))
	req6 := ip6Packet(self6, target6, 58, echoPacket(128, id, seq))
	for _, c := range []struct {
		name    string
		v6      bool
		b       []byte
		from    netip.Addr
		done    bool
		wantErr string
		is      error
	}{
		{name: "v4 reply", b: ip4Packet(target, self, 1, echoPacket(0, id, seq)), from: target, done: true},
		{name: "v4 reply with options", b: func() []byte {
			p := ip4Packet(target, self, 1, nil)
			p[0] = 0x46
			return append(append(p, 1, 1, 1, 0), echoPacket(0, id, seq)...)
		}(), from: target, done: true},
		{name: "v4 reply other id", b: ip4Packet(target, self, 1, echoPacket(0, id+1, seq)), from: target},
		{name: "v4 reply other seq", b: ip4Packet(target, self, 1, echoPacket(0, id, seq+1)), from: target},
		{name: "v4 reply other host", b: ip4Packet(router, self, 1, echoPacket(0, id, seq)), from: router},
		{name: "v4 request", b: ip4Packet(self, target, 1, echoPacket(8, id, seq)), from: self},
		{name: "v4 empty", b: nil, from: target},
		{name: "v4 short header", b: ip4Packet(target, self, 1, echoPacket(0, id, seq))[:12], from: target},
		{name: "v4 bad header length", b: func() []byte {
			p := ip4Packet(target, self, 1, echoPacket(0, id, seq))
			p[0] = 0x4f
			return p[:40]
		}(), from: target},
		{name: "v4 short icmp", b: ip4Packet(target, self, 1, []byte{0, 0, 0, 0}), from: target},
		{name: "v4 host unreachable", b: ip4Packet(router, self, 1, icmpErrPacket(3, 1, req4)), from: router, done: true,
			wantErr: "host unreachable (ICMP from 10.0.0.254)", is: syscall.EHOSTUNREACH},
		{name: "v4 net unreachable", b: ip4Packet(router, self, 1, icmpErrPacket(3, 0, req4[:28])), from: router, done: true,
			wantErr: "network unreachable (ICMP from 10.0.0.254)", is: syscall.ENETUNREACH},
		{name: "v4 filtered", b: ip4Packet(router, self, 1, icmpErrPacket(3, 13, req4)), from: router, done: true,
			wantErr: "rejected by 10.0.0.254 (ICMP communication administratively prohibited)", is: syscall.EACCES},
		{name: "v4 ttl exceeded", b: ip4Packet(router, self, 1, icmpErrPacket(11, 0, req4)), from: router, done: true,
			wantErr: "TTL exceeded (ICMP from 10.0.0.254)", is: syscall.EHOSTUNREACH},
		{name: "v4 unreachable for other echo", b: ip4Packet(router, self, 1, icmpErrPacket(3, 1, ip4Packet(self, target, 1, echoPacket(8, id, seq+1)))), from: router},
		{name: "v4 unreachable for other target", b: ip4Packet(router, self, 1, icmpErrPacket(3, 1, ip4Packet(self, router, 1, echoPacket(8, id, seq)))), from: router},
		{name: "v4 unreachable for udp", b: ip4Packet(router, self, 1, icmpErrPacket(3, 3, ip4Packet(self, target, 17, echoPacket(8, id, seq)))), from: router},
		{name: "v4 unreachable truncated quote", b: ip4Packet(router, self, 1, icmpErrPacket(3, 1, req4[:24])), from: router},
		{name: "v4 redirect", b: ip4Packet(router, self, 1, icmpErrPacket(5, 1, req4)), from: router},
		{name: "v6 reply", v6: true, b: echoPacket(129, id, seq), from: target6, done: true},
		{name: "v6 reply other id", v6: true, b: echoPacket(129, id+1, seq), from: target6},
		{name: "v6 reply other host", v6: true, b: echoPacket(129, id, seq), from: router6},
		{name: "v6 request", v6: true, b: echoPacket(128, id, seq), from: self6},
		{name: "v6 short", v6: true, b: echoPacket(129, id, seq)[:6], from: target6},
		{name: "v6 address unreachable", v6: true, b: icmpErrPacket(1, 3, req6), from: self6, done: true,
			wantErr: "address unreachable (ICMP from fd00::2)", is: syscall.EHOSTUNREACH},
		{name: "v6 prohibited", v6: true, b: icmpErrPacket(1, 1, req6), from: router6, done: true,
			wantErr: "rejected by fd00::fe (ICMP communication with destination administratively prohibited)", is: syscall.EACCES},
		{name: "v6 no route", v6: true, b: icmpErrPacket(1, 0, req6), from: router6, done: true,
			wantErr: "no route to destination (ICMP from fd00::fe)", is: syscall.ENETUNREACH},
		{name: "v6 hop limit", v6: true, b: icmpErrPacket(3, 0, req6), from: router6, done: true,
			wantErr: "hop limit exceeded (ICMP from fd00::fe)"},
		{name: "v6 unreachable for other echo", v6: true, b: icmpErrPacket(1, 3, ip6Packet(self6, target6, 58, echoPacket(128, id+1, seq))), from: router6},
		{name: "v6 unreachable for other target", v6: true, b: icmpErrPacket(1, 3, ip6Packet(self6, router6, 58, echoPacket(128, id, seq))), from: router6},
		{name: "v6 unreachable truncated quote", v6: true, b: icmpErrPacket(1, 3, req6[:44]), from: router6},
		{name: "v6 packet too big", v6: true, b: icmpErrPacket(2, 0, req6), from: router6},
	} {
		t.Run(c.name, func(t *testing.T) {
			dst := target
			if c.v6 {
				dst = target6
			}
			done, err := echoAnswer(c.v6, c.b, c.from, dst, id, seq)
			if done != c.done {
				t.Fatalf("done = %v, want %v (err %v)", done, c.done, err)
			}
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("err = %v, want nil", err)
			case c.wantErr != "" && (err == nil || err.Error() != c.wantErr):
				t.Fatalf("err = %v, want %q", err, c.wantErr)
			case c.is != nil && !errors.Is(err, c.is):
				t.Fatalf("err = %v, is not %v", err, c.is)
			}
		})
	}
}

func TestDNSAnswer(t *testing.T) {
	q := dnsmessage.Question{Name: dnsmessage.MustNewName("a.test."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}
	pack := func(h dnsmessage.Header, qs ...dnsmessage.Question) []byte {
		b, err := (&dnsmessage.Message{Header: h, Questions: qs}).Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	upper := q
	upper.Name = dnsmessage.MustNewName("A.TEST.")
	aaaa := q
	aaaa.Type = dnsmessage.TypeAAAA
	for _, c := range []struct {
		name    string
		b       []byte
		done    bool
		wantErr string
	}{
		{"response", pack(dnsmessage.Header{ID: 7, Response: true}, q), true, ""},
		{"servfail", pack(dnsmessage.Header{ID: 7, Response: true, RCode: dnsmessage.RCodeServerFailure}, q), true, ""},
		{"name case differs", pack(dnsmessage.Header{ID: 7, Response: true}, upper), true, ""},
		{"other type", pack(dnsmessage.Header{ID: 7, Response: true}, aaaa), true, "DNS: malformed response (NOERROR): question a.test. AAAA, want a.test. A"},
		{"other id", pack(dnsmessage.Header{ID: 8, Response: true}, q), false, ""},
		{"query", pack(dnsmessage.Header{ID: 7}, q), false, ""},
		{"garbage", []byte("garbage"), false, ""},
		{"truncated question", pack(dnsmessage.Header{ID: 7, Response: true, RCode: dnsmessage.RCodeServerFailure}, q)[:15], true, "DNS: malformed response (SERVFAIL): "},
	} {
		t.Run(c.name, func(t *testing.T) {
			done, err := dnsAnswer(c.b, 7, q)
			if done != c.done {
				t.Fatalf("done = %v, want %v (err %v)", done, c.done, err)
			}
			if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), c.wantErr)) {
				t.Fatalf("err = %v, want %q", err, c.wantErr)
			}
		})
	}
}
