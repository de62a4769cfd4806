package probe

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/netready/netready/pkg/config"
)

// httpProber succeeds when a GET gets a status in [min, max]. It speaks
// HTTP/1.1 on one connection by hand: http.Transport would pool connections
// and run goroutines of its own, all for one request.
type httpProber struct {
	socks    Sockets
	dst      netip.AddrPort
	tls      *tls.Config // nil for plain http
	req      []byte
	min, max int
}

func newHTTP(p config.Probe, s Sockets) (*httpProber, error) {
	host, path := p.Host, p.Path
	if host == "" {
		host = p.AddrPort().String()
	}
	if path == "" {
		path = "/"
	}
	if !strings.HasPrefix(path, "/") || !headerSafe(path) {
		return nil, fmt.Errorf("probe %s: bad HTTP path %q", p, p.Path)
	}
	if !headerSafe(host) {
		return nil, fmt.Errorf("probe %s: bad HTTP host %q", p, p.Host)
	}
	h := &httpProber{
		socks: s,
		dst:   p.AddrPort(),
		req:   fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: netready\r\nAccept: */*\r\nConnection: close\r\n\r\n", path, host),
		min:   p.StatusMin,
		max:   p.StatusMax,
	}
	if h.min == 0 && h.max == 0 {
		h.min, h.max = 200, 399
	}
	if h.min < 100 || h.max > 999 || h.min > h.max {
		return nil, fmt.Errorf("probe %s: bad status range %d-%d", p, p.StatusMin, p.StatusMax)
	}
	if p.Scheme == config.HTTPS {
		// The probe asks whether the server can be reached, not whether to
		// trust it: pods talk to servers with self-signed and private CAs that
		// netready does not know, and it sends nothing secret.
		h.tls = &tls.Config{InsecureSkipVerify: true}
	}
	return h, nil
}

// headerSafe says whether s can go into a request line or header as is.
func headerSafe(s string) bool {
	for i := range len(s) {
		if s[i] <= ' ' || s[i] == 0x7f {
			return false
		}
	}
	return s != ""
}

func (p *httpProber) Attempt(ctx context.Context) error {
	f, err := dialTCP(ctx, p.socks, p.dst)
	if err != nil {
		return err
	}
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return err
	}
	defer c.Close()
	defer tie(ctx, c)()

	var rw io.ReadWriter = c
	if p.tls != nil {
		tc := tls.Client(c, p.tls)
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("TLS handshake: %w", ioErr(ctx, err))
		}
		rw = tc
	}
	if _, err := rw.Write(p.req); err != nil {
		return fmt.Errorf("HTTP: %w", ioErr(ctx, err))
	}
	resp, err := http.ReadResponse(bufio.NewReader(rw), nil)
	if err != nil {
		switch err = ioErr(ctx, err); {
		case errors.Is(err, context.DeadlineExceeded):
			return &terseError{"HTTP: no response", err}
		case err == io.EOF:
			return &terseError{"HTTP: connection closed without a response", err}
		case err == io.ErrUnexpectedEOF:
			return &terseError{"HTTP: truncated response", err}
		}
		return fmt.Errorf("HTTP: %w", err)
	}
	if resp.StatusCode < p.min || resp.StatusCode > p.max {
		if p.min == p.max {
			return fmt.Errorf("HTTP %d, want %d", resp.StatusCode, p.min)
		}
		return fmt.Errorf("HTTP %d, want %d-%d", resp.StatusCode, p.min, p.max)
	}
	return nil
}
