package probe

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"syscall"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/netready/netready/pkg/config"
)

// dnsProber succeeds on any well-formed response to its query, whatever the
// rcode: the server answering is what is probed, not the name.
type dnsProber struct {
	socks Sockets
	dst   netip.AddrPort
	q     dnsmessage.Question
	re    recvErr
}

// newDNS takes p as config.ParseProbe made it: the name and the query type
// are already checked there.
func newDNS(p config.Probe, s Sockets) (*dnsProber, error) {
	n, err := dnsmessage.NewName(p.Name)
	if err != nil {
		return nil, fmt.Errorf("probe %s: %w", p, err)
	}
	q := dnsmessage.Question{Name: n, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}
	if p.QType == "AAAA" {
		q.Type = dnsmessage.TypeAAAA
	}
	return &dnsProber{socks: s, dst: p.AddrPort(), q: q}, nil
}

func query(id uint16, q dnsmessage.Question) ([]byte, error) {
	m := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{q},
	}
	return m.Pack()
}

func (p *dnsProber) Attempt(ctx context.Context) error {
	id := uint16(rand.Uint32())
	req, err := query(id, p.q)
	if err != nil {
		return err
	}
	f, rc, err := open(p.socks, p.dst.Addr(), unix.SOCK_DGRAM, unix.IPPROTO_UDP)
	if err != nil {
		return err
	}
	defer f.Close()
	defer tie(ctx, f)()

	// A connected UDP socket reports an ICMP port unreachable as
	// ECONNREFUSED on the next read, and reads only what dst sends.
	if cerr := rc.Control(func(fd uintptr) {
		if err = p.re.set(int(fd), p.dst.Addr().Is6()); err != nil {
			return
		}
		var sa unix.Sockaddr
		if sa, err = sockaddr(int(fd), p.dst); err == nil {
			err = unix.Connect(int(fd), sa)
		}
	}); cerr != nil {
		return cerr
	}
	if err != nil {
		return ioErr(ctx, err)
	}
	if err := sendto(rc, req, nil); err != nil {
		return ioErr(ctx, err)
	}
	buf := make([]byte, 1500)
	for {
		n, _, err := recvfrom(rc, buf)
		if err != nil {
			p.re.arm(err)
			if errno, ok := err.(syscall.Errno); ok && p.re.on.Load() {
				rc.Control(func(fd uintptr) { err = icmpCause(int(fd), unix.IPPROTO_UDP, p.dst.Addr(), errno) })
			}
			return noAnswer("DNS: no response", ioErr(ctx, err))
		}
		if done, err := dnsAnswer(buf[:n], id, p.q); done {
			return err
		}
	}
}

// dnsAnswer says whether b is the response to query id for q: done with a
// nil error for a well-formed response, done with an error for a malformed
// one. A packet that is not a response to id is ignored.
func dnsAnswer(b []byte, id uint16, q dnsmessage.Question) (done bool, err error) {
	var p dnsmessage.Parser
	h, err := p.Start(b)
	if err != nil || !h.Response || h.ID != id {
		return false, nil
	}
	got, err := p.Question()
	switch {
	case errors.Is(err, dnsmessage.ErrSectionDone):
		err = errors.New("no question")
	case err == nil && (!strings.EqualFold(got.Name.String(), q.Name.String()) || got.Type != q.Type || got.Class != q.Class):
		err = fmt.Errorf("question %s %s, want %s %s", got.Name, typeName(got.Type), q.Name, typeName(q.Type))
	}
	if err != nil {
		return true, fmt.Errorf("DNS: malformed response (%s): %v", rcodeName(h.RCode), err)
	}
	return true, nil
}

func typeName(t dnsmessage.Type) string {
	return strings.TrimPrefix(t.String(), "Type")
}

func rcodeName(rc dnsmessage.RCode) string {
	switch rc {
	case dnsmessage.RCodeSuccess:
		return "NOERROR"
	case dnsmessage.RCodeFormatError:
		return "FORMERR"
	case dnsmessage.RCodeServerFailure:
		return "SERVFAIL"
	case dnsmessage.RCodeNameError:
		return "NXDOMAIN"
	case dnsmessage.RCodeNotImplemented:
		return "NOTIMP"
	case dnsmessage.RCodeRefused:
		return "REFUSED"
	}
	return fmt.Sprintf("rcode %d", rc)
}
