package testbed

import (
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// servers are the db's listeners. Their sockets are created inside the db netns and served from
// ordinary goroutines: a socket keeps the netns it was created in.
type servers struct {
	tcp  net.Listener
	http *http.Server
	dns  net.PacketConn
	wg   sync.WaitGroup
}

func startServers(db *Netns) (s *servers, err error) {
	s = &servers{}
	defer func() {
		if err != nil {
			s.close()
		}
	}()

	// Wildcard listeners: one socket per service answers both the IPv4 and the IPv6 address.
	if s.tcp, err = db.Listen("tcp", portAddr(TCPPort)); err != nil {
		return s, err
	}
	s.wg.Go(func() { acceptAndClose(s.tcp) })

	httpLn, err := db.Listen("tcp", portAddr(HTTPPort))
	if err != nil {
		return s, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	s.wg.Go(func() { s.http.Serve(httpLn) })

	if s.dns, err = db.ListenPacket("udp", portAddr(DNSPort)); err != nil {
		return s, err
	}
	s.wg.Go(func() { serveDNS(s.dns) })
	return s, nil
}

func (s *servers) close() error {
	var errs []error
	if s.tcp != nil {
		errs = append(errs, s.tcp.Close())
	}
	if s.http != nil {
		errs = append(errs, s.http.Close())
	}
	if s.dns != nil {
		errs = append(errs, s.dns.Close())
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

func acceptAndClose(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return // closed
		}
		c.Close()
	}
}

// serveDNS answers every query for A or AAAA, whatever the name, with the db's own address: the
// probes need an answer, not a resolver.
func serveDNS(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		if resp, ok := dnsAnswer(buf[:n]); ok {
			pc.WriteTo(resp, from)
		}
	}
}

func dnsAnswer(query []byte) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil || h.Response {
		return nil, false
	}
	questions, err := p.AllQuestions()
	if err != nil {
		return nil, false
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{
		ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired,
	})
	b.EnableCompression()
	if b.StartQuestions() != nil {
		return nil, false
	}
	for _, q := range questions {
		b.Question(q)
	}
	if b.StartAnswers() != nil {
		return nil, false
	}
	for _, q := range questions {
		rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}
		switch q.Type {
		case dnsmessage.TypeA:
			b.AResource(rh, dnsmessage.AResource{A: DBAddr.As4()})
		case dnsmessage.TypeAAAA:
			b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: DBAddr6.As16()})
		}
	}
	resp, err := b.Finish()
	return resp, err == nil
}

func portAddr(port int) string { return ":" + strconv.Itoa(port) }
