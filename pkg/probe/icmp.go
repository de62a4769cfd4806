package probe

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"syscall"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// icmpProber succeeds on an echo reply from dst.
//
// It uses raw sockets, not ping sockets: netready runs as root, and ping
// sockets are off by default in a new netns (net.ipv4.ping_group_range).
type icmpProber struct {
	socks Sockets
	dst   netip.Addr
}

var echoPayload = []byte("netready echo probe")

func (p *icmpProber) Attempt(ctx context.Context) error {
	v6 := p.dst.Is6()
	proto := unix.IPPROTO_ICMP
	if v6 {
		proto = unix.IPPROTO_ICMPV6
	}
	f, rc, err := open(p.socks, p.dst, unix.SOCK_RAW, proto)
	if err != nil {
		return err
	}
	defer f.Close()
	defer tie(ctx, f)()

	// The socket stays unconnected: connect(2) would have the kernel drop a
	// Destination Unreachable from a router, as it does not come from dst.
	var sa unix.Sockaddr
	if cerr := rc.Control(func(fd uintptr) {
		if err = icmpFilter(int(fd), v6); err == nil {
			sa, err = sockaddr(int(fd), netip.AddrPortFrom(p.dst, 0))
		}
	}); cerr != nil {
		return cerr
	}
	if err != nil {
		return err
	}

	id, seq := uint16(rand.Uint32()), uint16(rand.Uint32())
	req, err := echoRequest(v6, id, seq)
	if err != nil {
		return err
	}
	if err := sendto(rc, req, sa); err != nil {
		return ioErr(ctx, err)
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := recvfrom(rc, buf)
		if err != nil {
			return noAnswer("no echo reply", ioErr(ctx, err))
		}
		if done, err := echoAnswer(v6, buf[:n], addrOf(from), p.dst, id, seq); done {
			return err
		}
	}
}

// icmpFilter lets through only the types that answer or refuse an echo
// request: a raw socket otherwise gets a copy of every ICMP packet that
// reaches the netns, including the other attempts' traffic.
func icmpFilter(fd int, v6 bool) error {
	if v6 {
		var f unix.ICMPv6Filter
		for i := range f.Data {
			f.Data[i] = ^uint32(0) // a set bit blocks its type
		}
		for _, t := range []ipv6.ICMPType{ipv6.ICMPTypeEchoReply, ipv6.ICMPTypeDestinationUnreachable, ipv6.ICMPTypeTimeExceeded} {
			f.Data[t>>5] &^= 1 << (t & 31)
		}
		return unix.SetsockoptICMPv6Filter(fd, unix.IPPROTO_ICMPV6, unix.ICMPV6_FILTER, &f)
	}
	pass := uint32(1<<ipv4.ICMPTypeEchoReply | 1<<ipv4.ICMPTypeDestinationUnreachable | 1<<ipv4.ICMPTypeTimeExceeded)
	return unix.SetsockoptInt(fd, unix.SOL_RAW, unix.ICMP_FILTER, int(int32(^pass)))
}

// echoRequest marshals an echo request. The kernel computes the checksum for
// ICMPv6 raw sockets; icmp.Message computes it for ICMPv4.
func echoRequest(v6 bool, id, seq uint16) ([]byte, error) {
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if v6 {
		typ = ipv6.ICMPTypeEchoRequest
	}
	m := icmp.Message{Type: typ, Body: &icmp.Echo{ID: int(id), Seq: int(seq), Data: echoPayload}}
	return m.Marshal(nil)
}

// echoAnswer says whether packet b, read from a raw ICMP socket and sent by
// from, answers the echo request id/seq sent to dst: done with a nil error
// for the reply, done with an error for an ICMP error quoting the request.
// Anything else is someone else's.
func echoAnswer(v6 bool, b []byte, from, dst netip.Addr, id, seq uint16) (done bool, err error) {
	if !v6 {
		// IPv4 raw sockets read the IP header too.
		var ok bool
		if b, ok = stripIPv4(b); !ok {
			return false, nil
		}
	}
	if len(b) < 8 {
		return false, nil
	}
	typ, code := b[0], b[1]
	if typ == echoReplyType(v6) {
		return from.WithZone("") == dst.WithZone("") && echoIs(b, echoReplyType(v6), id, seq), nil
	}
	if !quotesEcho(v6, b[8:], dst, id, seq) {
		return false, nil
	}
	what, errno := icmpError(v6, typ, code)
	if what == "" {
		return false, nil
	}
	return true, &terseError{fmt.Sprintf("%s (ICMP from %s)", what, from), errno}
}

func echoReplyType(v6 bool) byte {
	if v6 {
		return byte(ipv6.ICMPTypeEchoReply)
	}
	return byte(ipv4.ICMPTypeEchoReply)
}

// echoIs says whether b starts with an echo header of type typ for id/seq.
func echoIs(b []byte, typ byte, id, seq uint16) bool {
	return len(b) >= 8 && b[0] == typ &&
		binary.BigEndian.Uint16(b[4:]) == id && binary.BigEndian.Uint16(b[6:]) == seq
}

// stripIPv4 returns the payload of IPv4 packet b.
func stripIPv4(b []byte) ([]byte, bool) {
	if len(b) < ipv4.HeaderLen || b[0]>>4 != 4 {
		return nil, false
	}
	hl := int(b[0]&0x0f) * 4
	if hl < ipv4.HeaderLen || len(b) < hl {
		return nil, false
	}
	return b[hl:], true
}

// quotesEcho says whether q, the body of an ICMP error, quotes our echo
// request to dst.
func quotesEcho(v6 bool, q []byte, dst netip.Addr, id, seq uint16) bool {
	if v6 {
		const hl = ipv6.HeaderLen
		return len(q) >= hl && q[0]>>4 == 6 && q[6] == unix.IPPROTO_ICMPV6 &&
			netip.AddrFrom16([16]byte(q[24:40])) == dst.WithZone("") &&
			echoIs(q[hl:], byte(ipv6.ICMPTypeEchoRequest), id, seq)
	}
	if len(q) < ipv4.HeaderLen || q[9] != unix.IPPROTO_ICMP ||
		netip.AddrFrom4([4]byte(q[16:20])) != dst {
		return false
	}
	body, ok := stripIPv4(q)
	return ok && echoIs(body, byte(ipv4.ICMPTypeEcho), id, seq)
}

// icmpError names an ICMP error and picks the errno the kernel would report
// for it on a connected socket; "" for a type that is not an error.
func icmpError(v6 bool, typ, code byte) (string, syscall.Errno) {
	if v6 {
		switch ipv6.ICMPType(typ) {
		case ipv6.ICMPTypeDestinationUnreachable:
			switch code {
			case 0:
				return "no route to destination", syscall.ENETUNREACH
			case 1:
				return "administratively prohibited", syscall.EACCES
			case 3:
				return "address unreachable", syscall.EHOSTUNREACH
			case 5:
				return "source address failed policy", syscall.EACCES
			case 6:
				return "reject route to destination", syscall.EACCES
			}
			return fmt.Sprintf("destination unreachable (code %d)", code), syscall.EHOSTUNREACH
		case ipv6.ICMPTypeTimeExceeded:
			return "hop limit exceeded", syscall.EHOSTUNREACH
		}
		return "", 0
	}
	switch ipv4.ICMPType(typ) {
	case ipv4.ICMPTypeDestinationUnreachable:
		switch code {
		case 0:
			return "network unreachable", syscall.ENETUNREACH
		case 1:
			return "host unreachable", syscall.EHOSTUNREACH
		case 9, 10, 13:
			return "administratively prohibited", syscall.EACCES
		}
		return fmt.Sprintf("destination unreachable (code %d)", code), syscall.EHOSTUNREACH
	case ipv4.ICMPTypeTimeExceeded:
		return "TTL exceeded", syscall.EHOSTUNREACH
	}
	return "", 0
}
