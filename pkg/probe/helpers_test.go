package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/netready/netready/pkg/config"
)

// localSockets creates sockets in the test's own network namespace.
type localSockets struct{}

func (localSockets) Socket(domain, typ, proto int) (int, error) {
	fd, err := unix.Socket(domain, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	return fd, os.NewSyscallError("socket", err)
}

// check is one probe attempt and what it should come to.
type check struct {
	name    string
	probe   config.Probe
	timeout time.Duration // attempt timeout; 2s when zero
	wantErr string        // "" for success, else a substring of the error
	is      error         // when set, the error must satisfy errors.Is
	fast    bool          // the failure must come well before the timeout
}

func (c check) run(t *testing.T, s Sockets) {
	t.Helper()
	p, err := New(c.probe, s)
	if err != nil {
		t.Fatalf("New(%+v): %v", c.probe, err)
	}
	timeout := c.timeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	c.check(t, "Attempt", timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return p.Attempt(ctx)
	})
	// A fresh prober: a failed attempt arms the error queue (recvErr),
	// and the next then names the ICMP error behind its errno.
	if p, _ = New(c.probe, s); p == nil {
		return
	}
	if st, ok := p.(Starter); ok {
		c.check(t, "Start", timeout, func() error { return await(st, timeout) })
		st.Close()
	}
}

// check makes one attempt and holds its outcome to c.
func (c check) check(t *testing.T, way string, timeout time.Duration, attempt func() error) {
	t.Helper()
	start := time.Now()
	err := attempt()
	took := time.Since(start)
	t.Logf("%s %s: %v after %v", way, c.probe, err, took.Round(time.Millisecond))
	switch {
	case c.wantErr == "" && err != nil:
		t.Fatalf("%s: %v (after %v), want success", way, err, took)
	case c.wantErr != "" && err == nil:
		t.Fatalf("%s succeeded, want error %q", way, c.wantErr)
	case c.wantErr != "" && !strings.Contains(err.Error(), c.wantErr):
		t.Fatalf("%s: %q, want an error containing %q", way, err, c.wantErr)
	case c.is != nil && !errors.Is(err, c.is):
		t.Fatalf("%s: %q is not %v", way, err, c.is)
	case c.fast && took > timeout/4:
		t.Fatalf("%s failed after %v, want well under the %v timeout", way, took, timeout)
	}
	if c.is == context.DeadlineExceeded && (took < timeout-50*time.Millisecond || took > timeout+time.Second) {
		t.Fatalf("%s timed out after %v, want about %v", way, took, timeout)
	}
}

// await makes an attempt through Start, as the gate does: it asks for its
// Result each time it is ready, and closes it after timeout.
func await(s Starter, timeout time.Duration) error {
	ready := make(chan struct{}, 1)
	a, err := s.Start(func() {
		select {
		case ready <- struct{}{}:
		default:
		}
	})
	if a == nil {
		return err
	}
	defer a.Close()
	expire := time.NewTimer(timeout)
	defer expire.Stop()
	for {
		select {
		case <-expire.C:
			return errTimeout
		case <-ready:
			if done, err := a.Result(); done {
				return err
			}
		}
	}
}

// statusHandler answers /code/NNN with status NNN, and 400 to a request that
// does not look like netready's.
func statusHandler(w http.ResponseWriter, r *http.Request) {
	if r.UserAgent() != "netready" || !r.Close || r.Method != http.MethodGet {
		http.Error(w, "unexpected request", http.StatusBadRequest)
		return
	}
	code := http.StatusOK
	if s, ok := strings.CutPrefix(r.URL.Path, "/code/"); ok {
		code, _ = strconv.Atoi(s)
	}
	w.WriteHeader(code)
}

// startHTTP serves statusHandler on ln, over TLS when tls is set.
func startHTTP(t *testing.T, ln net.Listener, tls bool) {
	t.Helper()
	s := httptest.NewUnstartedServer(http.HandlerFunc(statusHandler))
	s.Listener.Close()
	s.Listener = ln
	// Keep the log clean of the TLS handshake errors some cases cause on purpose.
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	if tls {
		s.StartTLS()
	} else {
		s.Start()
	}
	t.Cleanup(s.Close)
}

// startSilent accepts connections on ln and never says a word.
func startSilent(t *testing.T, ln net.Listener) {
	t.Helper()
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		var conns []net.Conn
		for {
			c, err := ln.Accept()
			if err != nil {
				break
			}
			conns = append(conns, c)
		}
		for _, c := range conns {
			c.Close()
		}
	}()
}

// startDNS answers queries on pc according to the name asked for:
// silent.test gets no answer, nx.test NXDOMAIN, wrong.test a response for
// another question, noq.test a REFUSED without a question, spoof.test a
// response with the wrong ID first; any other name an answer. A query without
// RD set gets FORMERR without a question.
func startDNS(t *testing.T, pc net.PacketConn) {
	t.Helper()
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var m dnsmessage.Message
			if m.Unpack(buf[:n]) != nil || len(m.Questions) != 1 {
				continue
			}
			q := m.Questions[0]
			resp := dnsmessage.Message{
				Header:    dnsmessage.Header{ID: m.ID, Response: true, RecursionDesired: true},
				Questions: m.Questions,
			}
			switch name := q.Name.String(); {
			case !m.RecursionDesired:
				resp.RCode, resp.Questions = dnsmessage.RCodeFormatError, nil
			case name == "silent.test.":
				continue
			case name == "nx.test.":
				resp.RCode = dnsmessage.RCodeNameError
			case name == "wrong.test.":
				resp.Questions = []dnsmessage.Question{{Name: dnsmessage.MustNewName("other.test."), Type: q.Type, Class: q.Class}}
			case name == "noq.test.":
				resp.RCode, resp.Questions = dnsmessage.RCodeRefused, nil
			case name == "spoof.test.":
				spoof := resp
				spoof.ID++
				if b, err := spoof.Pack(); err == nil {
					pc.WriteTo(b, from)
				}
			default:
				h := dnsmessage.ResourceHeader{Name: q.Name, Type: q.Type, Class: q.Class, TTL: 60}
				if q.Type == dnsmessage.TypeAAAA {
					resp.Answers = []dnsmessage.Resource{{Header: h, Body: &dnsmessage.AAAAResource{AAAA: [16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 1}}}}
				} else {
					resp.Answers = []dnsmessage.Resource{{Header: h, Body: &dnsmessage.AResource{A: [4]byte{192, 0, 2, 1}}}}
				}
			}
			if b, err := resp.Pack(); err == nil {
				pc.WriteTo(b, from)
			}
		}
	}()
}

// addrPort is the address a listener or packet conn is bound to.
func addrPort(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func withAddr(ap netip.AddrPort, a netip.Addr) netip.AddrPort {
	return netip.AddrPortFrom(a, ap.Port())
}

// mustProbe parses url as the conflist would: the probers take only what
// config.ParseProbe made.
func mustProbe(url string) config.Probe {
	p, err := config.ParseProbe(url)
	if err != nil {
		panic(err)
	}
	return p
}

func tcpProbe(ap netip.AddrPort, refusedOK bool) config.Probe {
	if refusedOK {
		return mustProbe("tcp://" + ap.String() + "?refused=ok")
	}
	return mustProbe("tcp://" + ap.String())
}

// httpProbe is scheme://ap/path, with ?status=min-max unless min is 0.
func httpProbe(scheme config.Scheme, ap netip.AddrPort, path string, min, max int) config.Probe {
	u := string(scheme) + "://" + ap.String() + path
	if min != 0 {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		u += fmt.Sprintf("%sstatus=%d-%d", sep, min, max)
	}
	return mustProbe(u)
}

func dnsProbe(ap netip.AddrPort, name, qtype string) config.Probe {
	u := "dns://" + ap.String() + "/" + name
	if qtype != "" {
		u += "?type=" + qtype
	}
	return mustProbe(u)
}

func icmpProbe(a netip.Addr) config.Probe {
	return mustProbe("icmp://" + hostOf(a))
}

func hostOf(a netip.Addr) string {
	if a.Is6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}
