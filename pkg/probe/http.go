package probe

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"

	"github.com/netready/netready/pkg/config"
)

// httpProber succeeds when a GET gets a status in [min, max]. It speaks
// HTTP/1.1 on one connection of its own: http.Transport would pool
// connections and run goroutines of its own, all for one request.
type httpProber struct {
	socks    Sockets
	dst      netip.AddrPort
	tls      *tls.Config // nil for plain http
	req      []byte      // the request, written once by http.Request.Write
	min, max int
	recvErr  recvErr
}

// newHTTP takes p as config.ParseProbe made it: Host, Path and the status
// range are already checked there.
func newHTTP(p config.Probe, s Sockets) (*httpProber, error) {
	uri, err := url.ParseRequestURI(p.Path)
	if err != nil {
		return nil, fmt.Errorf("probe %s: %w", p, err)
	}
	r := &http.Request{
		Method:     http.MethodGet,
		URL:        uri,
		Host:       p.Host,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     http.Header{"User-Agent": {"netready"}, "Accept": {"*/*"}},
		Close:      true,
	}
	var req bytes.Buffer
	if err := r.Write(&req); err != nil {
		return nil, fmt.Errorf("probe %s: %w", p, err)
	}
	h := &httpProber{socks: s, dst: p.AddrPort(), req: req.Bytes(), min: p.StatusMin, max: p.StatusMax}
	if p.Scheme == config.HTTPS {
		// The probe asks whether the server can be reached, not whether to
		// trust it: pods talk to servers with self-signed and private CAs that
		// netready does not know, and it sends nothing secret.
		h.tls = &tls.Config{InsecureSkipVerify: true}
	}
	return h, nil
}

func (p *httpProber) Attempt(ctx context.Context) error {
	fd, err := dialTCP(ctx, p.socks, p.dst, &p.recvErr)
	if err != nil {
		return err
	}
	// The rest of the exchange reads and writes through Go's poller.
	f := os.NewFile(uintptr(fd), "probe")
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
