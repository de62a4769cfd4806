package probe

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// ICMPError is an attempt that an ICMP error ended: what it said and who
// sent it. A TCP connect gets EHOSTUNREACH both when nobody answered the
// pod's ARP and when a firewall sent "host administratively prohibited"
// (the kernel's icmp_err_convert maps both to it); only the ICMP message
// itself tells them apart, so the probes read it (the raw ICMP socket's
// packet, or the socket's error queue for TCP and UDP).
type ICMPError struct {
	From netip.Addr // the sender of the ICMP error: a router, a firewall, the target
	V6   bool
	Type int // ICMP type: 3 destination unreachable, 11 time exceeded (ICMPv6: 1, 3)
	Code int
	// Reject says that a firewall (or a prohibit route) refused the packet:
	// an "administratively prohibited" of any kind, or a port unreachable
	// no host sends of its own (for a TCP SYN or an echo request, or from
	// an address that is not the target), which is what iptables' REJECT
	// and nftables' reject send by default.
	Reject bool
	Errno  syscall.Errno // what the socket call returned
}

func (e *ICMPError) Error() string {
	what := icmpName(e.V6, e.Type, e.Code)
	if e.Reject {
		return fmt.Sprintf("rejected by %s (ICMP %s)", e.From, what)
	}
	return fmt.Sprintf("%s (ICMP from %s)", what, e.From)
}

func (e *ICMPError) Unwrap() error { return e.Errno }

// The ICMP types and codes netready names (RFC 792, RFC 1812, RFC 4443).
const (
	icmpDstUnreach   = 3
	icmpTimeExceeded = 11
	icmp6DstUnreach  = 1
	icmp6TimeExceed  = 3

	codePortUnreach  = 3 // ICMPv4
	code6PortUnreach = 4 // ICMPv6
)

// icmpName names an ICMP error as an operator reads it.
func icmpName(v6 bool, typ, code int) string {
	if v6 {
		switch typ {
		case icmp6DstUnreach:
			switch code {
			case 0:
				return "no route to destination"
			case 1:
				return "communication with destination administratively prohibited"
			case 3:
				return "address unreachable"
			case 4:
				return "port unreachable"
			case 5:
				return "source address failed ingress/egress policy"
			case 6:
				return "reject route to destination"
			}
			return fmt.Sprintf("destination unreachable (code %d)", code)
		case icmp6TimeExceed:
			return "hop limit exceeded"
		}
		return fmt.Sprintf("%v (ICMPv6 type %d code %d)", ipv6.ICMPType(typ), typ, code)
	}
	switch typ {
	case icmpDstUnreach:
		switch code {
		case 0:
			return "network unreachable"
		case 1:
			return "host unreachable"
		case 2:
			return "protocol unreachable"
		case 3:
			return "port unreachable"
		case 4:
			return "fragmentation needed"
		case 9:
			return "network administratively prohibited"
		case 10:
			return "host administratively prohibited"
		case 13:
			return "communication administratively prohibited"
		}
		return fmt.Sprintf("destination unreachable (code %d)", code)
	case icmpTimeExceeded:
		return "TTL exceeded"
	}
	return fmt.Sprintf("%v (ICMP type %d code %d)", ipv4.ICMPType(typ), typ, code)
}

// isReject says whether an ICMP error about a packet of protocol proto
// (IPPROTO_TCP, _UDP, _ICMP or _ICMPV6) to dst, sent by from, is a
// firewall's reject.
func isReject(v6 bool, typ, code, proto int, from, dst netip.Addr) bool {
	if v6 {
		if typ != icmp6DstUnreach {
			return false
		}
		switch code {
		case 1, 5, 6: // administratively prohibited, failed policy, reject route
			return true
		case code6PortUnreach:
			return portRejected(proto, from, dst)
		}
		return false
	}
	if typ != icmpDstUnreach {
		return false
	}
	switch code {
	case 9, 10, 13: // network, host, communication administratively prohibited
		return true
	case codePortUnreach:
		return portRejected(proto, from, dst)
	}
	return false
}

// portRejected: a host answers a SYN to a closed port with a RST and an
// echo request with a reply, never with a port unreachable; and only the
// target itself can say that one of its UDP ports is closed. Any other
// port unreachable is made up by a firewall (the default of iptables'
// REJECT and of nftables' reject).
func portRejected(proto int, from, dst netip.Addr) bool {
	return proto != unix.IPPROTO_UDP || from.Unmap() != dst.WithZone("").Unmap()
}

// recvErr turns on the socket error queue (IP_RECVERR) of a prober's
// sockets once one of its attempts failed with an errno: the ICMP error
// behind the next ones is then kept for icmpCause. An attempt on a network
// that works pays nothing for it: not even the setsockopt.
type recvErr struct{ on atomic.Bool }

// arm is called with an attempt's error.
func (r *recvErr) arm(err error) {
	if _, ok := err.(syscall.Errno); ok && !r.on.Load() {
		r.on.Store(true)
	}
}

// set turns the error queue on for fd when armed.
func (r *recvErr) set(fd int, v6 bool) error {
	if !r.on.Load() {
		return nil
	}
	on := int32(1)
	if v6 {
		return setsockoptRaw(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVERR, unsafe.Pointer(&on), 4)
	}
	return setsockoptRaw(fd, unix.IPPROTO_IP, unix.IP_RECVERR, unsafe.Pointer(&on), 4)
}

// errQueueSpace holds one sock_extended_err with its offender's address.
var errQueueSpace = unix.CmsgSpace(int(unsafe.Sizeof(unix.SockExtendedErr{})) + unix.SizeofSockaddrInet6)

// icmpCause reads the socket's error queue for the ICMP error behind errno,
// the error of an attempt of protocol proto to dst: an *ICMPError
// wrapping errno when the kernel queued one (IP_RECVERR on), errno itself
// otherwise.
func icmpCause(fd int, proto int, dst netip.Addr, errno syscall.Errno) error {
	var cause error = errno
	oob := make([]byte, errQueueSpace)
	for range 4 { // one per ICMP error received: a connect gets one, a UDP socket a few
		_, oobn, _, _, err := unix.Recvmsg(fd, nil, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			break
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			break
		}
		for _, m := range msgs {
			if e := parseExtendedErr(m, proto, dst); e != nil {
				e.Errno = errno
				cause = e
			}
		}
	}
	return cause
}

// parseExtendedErr reads an IP_RECVERR or IPV6_RECVERR control message:
// struct sock_extended_err followed by the offender's sockaddr
// (SO_EE_OFFENDER). x/sys/unix defines the struct but parses neither.
func parseExtendedErr(m unix.SocketControlMessage, proto int, dst netip.Addr) *ICMPError {
	if !(m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_RECVERR) &&
		!(m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_RECVERR) {
		return nil
	}
	n := int(unsafe.Sizeof(unix.SockExtendedErr{}))
	if len(m.Data) < n+2 {
		return nil
	}
	ee := (*unix.SockExtendedErr)(unsafe.Pointer(&m.Data[0]))
	v6 := ee.Origin == unix.SO_EE_ORIGIN_ICMP6
	if ee.Origin != unix.SO_EE_ORIGIN_ICMP && !v6 {
		return nil // a local error (EMSGSIZE, say): no ICMP behind it
	}
	var from netip.Addr
	off := m.Data[n:]
	switch fam := *(*uint16)(unsafe.Pointer(&off[0])); {
	case fam == unix.AF_INET && len(off) >= unix.SizeofSockaddrInet4:
		from = netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(&off[0])).Addr)
	case fam == unix.AF_INET6 && len(off) >= unix.SizeofSockaddrInet6:
		from = netip.AddrFrom16((*unix.RawSockaddrInet6)(unsafe.Pointer(&off[0])).Addr).Unmap()
	default:
		return nil
	}
	typ, code := int(ee.Type), int(ee.Code)
	return &ICMPError{From: from, V6: v6, Type: typ, Code: code, Reject: isReject(v6, typ, code, proto, from, dst)}
}
