package probe

import (
	"context"
	"math/rand/v2"
	"net"
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
	proto := protoICMP
	if v6 {
		proto = protoICMPv6
	} else {
		// A raw IPv4 socket reads the IP header too (a SOCK_DGRAM ping socket
		// would not); a raw IPv6 socket never does.
		h, err := ipv4.ParseHeader(b)
		if err != nil {
			return false, nil
		}
		b = b[h.Len:]
	}
	m, err := icmp.ParseMessage(proto, b)
	if err != nil {
		return false, nil
	}
	var quoted []byte
	switch body := m.Body.(type) {
	case *icmp.Echo:
		return m.Type == echoReplyType(v6) && from.WithZone("") == dst.WithZone("") && body.ID == int(id) && body.Seq == int(seq), nil
	case *icmp.DstUnreach:
		quoted = body.Data
	case *icmp.TimeExceeded:
		quoted = body.Data
	default:
		return false, nil
	}
	if !quotesEcho(v6, quoted, dst, id, seq) {
		return false, nil
	}
	typ, errno := icmpType(m.Type), icmpErrno(v6, m.Type, m.Code)
	return true, &ICMPError{From: from.WithZone(""), V6: v6, Type: typ, Code: m.Code,
		Reject: isReject(v6, typ, m.Code, proto, from, dst), Errno: errno}
}

// The IANA protocol numbers icmp.ParseMessage takes.
const (
	protoICMP   = unix.IPPROTO_ICMP
	protoICMPv6 = unix.IPPROTO_ICMPV6
)

func echoReplyType(v6 bool) icmp.Type {
	if v6 {
		return ipv6.ICMPTypeEchoReply
	}
	return ipv4.ICMPTypeEchoReply
}

// quotesEcho says whether q, the packet an ICMP error quotes, is our echo
// request id/seq to dst.
func quotesEcho(v6 bool, q []byte, dst netip.Addr, id, seq uint16) bool {
	proto, request := protoICMP, icmp.Type(ipv4.ICMPTypeEcho)
	if v6 {
		h, err := ipv6.ParseHeader(q)
		if err != nil || h.NextHeader != protoICMPv6 || !addrIs(h.Dst, dst) {
			return false
		}
		q = q[ipv6.HeaderLen:]
		proto, request = protoICMPv6, ipv6.ICMPTypeEchoRequest
	} else {
		h, err := icmp.ParseIPv4Header(q)
		if err != nil || h.Protocol != protoICMP || !addrIs(h.Dst, dst) {
			return false
		}
		q = q[h.Len:]
	}
	m, err := icmp.ParseMessage(proto, q)
	if err != nil || m.Type != request {
		return false
	}
	e, ok := m.Body.(*icmp.Echo)
	return ok && e.ID == int(id) && e.Seq == int(seq)
}

// addrIs says whether ip, from a parsed header, is dst.
func addrIs(ip net.IP, dst netip.Addr) bool {
	a, ok := netip.AddrFromSlice(ip)
	return ok && a.Unmap() == dst.WithZone("").Unmap()
}

// icmpType is the number of an ICMP type as icmp.ParseMessage gave it.
func icmpType(t icmp.Type) int {
	switch t := t.(type) {
	case ipv4.ICMPType:
		return int(t)
	case ipv6.ICMPType:
		return int(t)
	}
	return -1
}

// icmpErrno picks the errno the kernel would report for an ICMP error on a
// connected socket.
func icmpErrno(v6 bool, typ icmp.Type, code int) syscall.Errno {
	if v6 {
		switch typ {
		case ipv6.ICMPTypeDestinationUnreachable:
			switch code {
			case 0:
				return syscall.ENETUNREACH
			case 1, 5, 6:
				return syscall.EACCES
			case 4:
				return syscall.ECONNREFUSED
			}
		}
		return syscall.EHOSTUNREACH
	}
	if typ == ipv4.ICMPTypeDestinationUnreachable {
		switch code {
		case 0:
			return syscall.ENETUNREACH
		case 3:
			return syscall.ECONNREFUSED
		case 9, 10, 13:
			return syscall.EACCES
		}
	}
	return syscall.EHOSTUNREACH
}
