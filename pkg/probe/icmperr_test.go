package probe

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/netready/netready/pkg/config"
)

func TestICMPErrorClassification(t *testing.T) {
	node, target := netip.MustParseAddr("10.42.0.1"), netip.MustParseAddr("198.51.100.10")
	node6, target6 := netip.MustParseAddr("fd42::1"), netip.MustParseAddr("2001:db8:2::10")
	const tcp, udp, icmp4, icmp6 = unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6
	for _, c := range []struct {
		name      string
		v6        bool
		typ, code int
		proto     int
		from, dst netip.Addr
		reject    bool
		want      string
	}{
		{"firewalld iptables: host-prohibited", false, 3, 10, tcp, node, target, true, "rejected by 10.42.0.1 (ICMP host administratively prohibited)"},
		{"net-prohibited", false, 3, 9, tcp, node, target, true, "rejected by 10.42.0.1 (ICMP network administratively prohibited)"},
		{"nft icmpx admin-prohibited, prohibit route", false, 3, 13, udp, node, target, true, "rejected by 10.42.0.1 (ICMP communication administratively prohibited)"},
		{"iptables REJECT default, tcp", false, 3, 3, tcp, target, target, true, "rejected by 198.51.100.10 (ICMP port unreachable)"},
		{"iptables REJECT default, echo", false, 3, 3, icmp4, node, target, true, "rejected by 10.42.0.1 (ICMP port unreachable)"},
		{"reject of a udp packet on the way", false, 3, 3, udp, node, target, true, "rejected by 10.42.0.1 (ICMP port unreachable)"},
		{"closed udp port of the target", false, 3, 3, udp, target, target, false, "port unreachable (ICMP from 198.51.100.10)"},
		{"no ARP answer beyond a router", false, 3, 1, tcp, node, target, false, "host unreachable (ICMP from 10.42.0.1)"},
		{"no route at a router", false, 3, 0, tcp, node, target, false, "network unreachable (ICMP from 10.42.0.1)"},
		{"ttl", false, 11, 0, tcp, node, target, false, "TTL exceeded (ICMP from 10.42.0.1)"},
		{"unnamed code", false, 3, 7, tcp, node, target, false, "destination unreachable (code 7) (ICMP from 10.42.0.1)"},
		{"v6 admin-prohibited", true, 1, 1, tcp, node6, target6, true, "rejected by fd42::1 (ICMP communication with destination administratively prohibited)"},
		{"v6 failed policy", true, 1, 5, tcp, node6, target6, true, "rejected by fd42::1 (ICMP source address failed ingress/egress policy)"},
		{"v6 reject route", true, 1, 6, tcp, node6, target6, true, "rejected by fd42::1 (ICMP reject route to destination)"},
		{"v6 port unreachable, tcp", true, 1, 4, tcp, node6, target6, true, "rejected by fd42::1 (ICMP port unreachable)"},
		{"v6 closed udp port", true, 1, 4, udp, target6, target6, false, "port unreachable (ICMP from 2001:db8:2::10)"},
		{"v6 address unreachable", true, 1, 3, icmp6, node6, target6, false, "address unreachable (ICMP from fd42::1)"},
		{"v6 no route", true, 1, 0, tcp, node6, target6, false, "no route to destination (ICMP from fd42::1)"},
		{"v6 hop limit", true, 3, 0, tcp, node6, target6, false, "hop limit exceeded (ICMP from fd42::1)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := isReject(c.v6, c.typ, c.code, c.proto, c.from, c.dst)
			if got != c.reject {
				t.Errorf("isReject = %v, want %v", got, c.reject)
			}
			e := &ICMPError{From: c.from, V6: c.v6, Type: c.typ, Code: c.code, Reject: got, Errno: syscall.EHOSTUNREACH}
			if e.Error() != c.want {
				t.Errorf("Error() = %q, want %q", e.Error(), c.want)
			}
			if !errors.Is(e, syscall.EHOSTUNREACH) {
				t.Errorf("%v does not unwrap to its errno", e)
			}
		})
	}
}

// extendedErr is a control message as the kernel queues it for IP_RECVERR
// (v4) or IPV6_RECVERR: sock_extended_err, then the offender's sockaddr.
func extendedErr(origin uint8, typ, code uint8, from netip.Addr) unix.SocketControlMessage {
	ee := unix.SockExtendedErr{Errno: uint32(syscall.EHOSTUNREACH), Origin: origin, Type: typ, Code: code}
	b := append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&ee)), unsafe.Sizeof(ee))...)
	h := unix.Cmsghdr{Level: unix.SOL_IP, Type: unix.IP_RECVERR}
	if from.Is4() {
		sa := make([]byte, unix.SizeofSockaddrInet4)
		binary.NativeEndian.PutUint16(sa, unix.AF_INET)
		a := from.As4()
		copy(sa[4:], a[:])
		b = append(b, sa...)
	} else {
		h = unix.Cmsghdr{Level: unix.SOL_IPV6, Type: unix.IPV6_RECVERR}
		sa := make([]byte, unix.SizeofSockaddrInet6)
		binary.NativeEndian.PutUint16(sa, unix.AF_INET6)
		a := from.As16()
		copy(sa[8:], a[:])
		b = append(b, sa...)
	}
	return unix.SocketControlMessage{Header: h, Data: b}
}

func TestParseExtendedErr(t *testing.T) {
	node, dst := netip.MustParseAddr("10.42.0.1"), netip.MustParseAddr("198.51.100.10")
	node6, dst6 := netip.MustParseAddr("fd42::1"), netip.MustParseAddr("2001:db8:2::10")
	for _, c := range []struct {
		name string
		m    unix.SocketControlMessage
		dst  netip.Addr
		want string // "" for no ICMP error
	}{
		{"v4 host prohibited", extendedErr(unix.SO_EE_ORIGIN_ICMP, 3, 10, node), dst, "rejected by 10.42.0.1 (ICMP host administratively prohibited)"},
		{"v4 host unreachable", extendedErr(unix.SO_EE_ORIGIN_ICMP, 3, 1, node), dst, "host unreachable (ICMP from 10.42.0.1)"},
		{"v6 admin prohibited", extendedErr(unix.SO_EE_ORIGIN_ICMP6, 1, 1, node6), dst6, "rejected by fd42::1 (ICMP communication with destination administratively prohibited)"},
		{"local origin", extendedErr(unix.SO_EE_ORIGIN_LOCAL, 0, 0, node), dst, ""},
		{"truncated", func() unix.SocketControlMessage {
			m := extendedErr(unix.SO_EE_ORIGIN_ICMP, 3, 10, node)
			m.Data = m.Data[:17]
			return m
		}(), dst, ""},
		{"short offender", func() unix.SocketControlMessage {
			m := extendedErr(unix.SO_EE_ORIGIN_ICMP, 3, 10, node)
			m.Data = m.Data[:20]
			return m
		}(), dst, ""},
		{"other control message", unix.SocketControlMessage{Header: unix.Cmsghdr{Level: unix.SOL_SOCKET, Type: unix.SCM_RIGHTS}, Data: make([]byte, 64)}, dst, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := parseExtendedErr(c.m, unix.IPPROTO_TCP, c.dst)
			switch {
			case c.want == "" && e != nil:
				t.Errorf("parseExtendedErr = %v, want none", e)
			case c.want != "" && (e == nil || e.Error() != c.want):
				t.Errorf("parseExtendedErr = %v, want %q", e, c.want)
			}
		})
	}
}

// A prober whose attempts succeed never turns the error queue on: the
// ready path makes the same syscalls as before. One failed attempt arms it.
func TestRecvErrArmsOnlyOnFailure(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			s := startLoopback(t, f)
			for _, c := range []struct {
				name string
				pr   Prober
				re   func(Prober) *recvErr
			}{
				{"tcp", mustNew(t, tcpProbe(s.web, false)), func(p Prober) *recvErr { return &p.(*tcpProber).recvErr }},
				{"http", mustNew(t, httpProbe("http", s.web, "/", 200, 399)), func(p Prober) *recvErr { return &p.(*httpProber).recvErr }},
				{"dns", mustNew(t, dnsProbe(s.dns, "ok.test.", "A")), func(p Prober) *recvErr { return &p.(*dnsProber).re }},
			} {
				for range 3 {
					if err := c.pr.Attempt(t.Context()); err != nil {
						t.Fatalf("%s: %v", c.name, err)
					}
				}
				if c.re(c.pr).on.Load() {
					t.Errorf("%s: error queue on after successful attempts only", c.name)
				}
			}
			p := mustNew(t, tcpProbe(s.closedTCP, false))
			if err := p.Attempt(t.Context()); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("closed port: %v", err)
			}
			if !p.(*tcpProber).recvErr.on.Load() {
				t.Errorf("error queue still off after a refused attempt")
			}
		})
	}
}

func mustNew(t *testing.T, pr config.Probe) Prober {
	t.Helper()
	p, err := New(pr, localSockets{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
