package main

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/netready/netready/pkg/gate"
	"github.com/netready/netready/pkg/probe"
)

func TestReproduce(t *testing.T) {
	for _, c := range []struct{ netns, network, pod, want string }{
		{"/var/run/netns/cni-1f2e", "cbr0", "shop/web-0",
			`to reproduce while the sandbox exists: netready check --netns /var/run/netns/cni-1f2e --conf CONFLIST --pod shop/web-0` +
				` (CONFLIST: the conflist named "cbr0" in the runtime's CNI conf dir, on K3s /var/lib/rancher/k3s/agent/etc/cni/net.d)`},
		{"/proc/4242/ns/net", "", "",
			`to reproduce while the sandbox exists: netready check --netns /proc/4242/ns/net --conf CONFLIST` +
				` (CONFLIST: the conflist chaining netready in the runtime's CNI conf dir, on K3s /var/lib/rancher/k3s/agent/etc/cni/net.d)`},
		{"/run/netns/it's here", "cbr0", "/web",
			`to reproduce while the sandbox exists: netready check --netns '/run/netns/it'\''s here' --conf CONFLIST` +
				` (CONFLIST: the conflist named "cbr0" in the runtime's CNI conf dir, on K3s /var/lib/rancher/k3s/agent/etc/cni/net.d)`},
	} {
		if got := reproduce(c.netns, c.network, c.pod); got != c.want {
			t.Errorf("reproduce(%q, %q, %q)\n got %s\nwant %s", c.netns, c.network, c.pod, got, c.want)
		}
	}
}

func TestPrevResultError(t *testing.T) {
	for _, c := range []struct {
		name    string
		network string
		err     error
		code    uint
		want    string
	}{
		{"CNI error keeps its code", "cbr0", types.NewError(types.ErrInvalidNetworkConfig, "prevResult: ips[0].interface is 7, but there are 3 interfaces", ""), 7,
			`prevResult (the result of the plugin before netready in conflist "cbr0", passed on by the runtime) is not usable: ips[0].interface is 7, but there are 3 interfaces; check that plugin and the conflist's cniVersion (netready passes the result on untouched)`},
		{"plain error is a decoding failure", "", errors.New("json: cannot unmarshal string"), 6,
			`prevResult (the result of the plugin before netready in its conflist, passed on by the runtime) is not usable: json: cannot unmarshal string; check that plugin and the conflist's cniVersion (netready passes the result on untouched)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var te *types.Error
			if err := prevResultError(c.network, c.err); !errors.As(err, &te) || te.Code != c.code || te.Msg != c.want {
				t.Errorf("prevResultError = %v (%T), want code %d %q", err, err, c.code, c.want)
			}
		})
	}
}

func TestFirewallHint(t *testing.T) {
	gw, router, db := netip.MustParseAddr("10.42.0.1"), netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.10")
	reject := func(from netip.Addr, code int) error {
		return &probe.ICMPError{From: from, Type: 3, Code: code, Reject: true, Errno: syscall.EHOSTUNREACH}
	}
	unreachable := &probe.ICMPError{From: router, Type: 3, Code: 1, Errno: syscall.EHOSTUNREACH}
	timeout := errors.New("no answer within 1s")
	local := func(a netip.Addr) bool { return a == gw }
	const nodeHint = "a firewall on this node rejected the pod's traffic (10.42.0.1 is this node's own address); " +
		"with firewalld, put the pod and service CIDRs in its trusted zone, as K3s's docs require: " +
		"firewall-cmd --permanent --zone=trusted --add-source=10.42.0.0/16 --add-source=10.43.0.0/16 && firewall-cmd --reload " +
		"(K3s's default CIDRs: use your cluster's); otherwise look at the node's FORWARD rules (iptables -S FORWARD, nft list ruleset) " +
		"for a REJECT the pod's traffic meets before it is accepted"
	const remoteHint = "a firewall beyond this node rejected the pod's traffic (192.0.2.1 is not this node's address); " +
		"look at that firewall's rules for traffic from this node's pods (masqueraded as the node's address unless the CNI says otherwise)"
	for _, c := range []struct {
		name  string
		conds []gate.Status
		want  string
	}{
		{"node's REJECT, last attempt", []gate.Status{{Name: "tcp://198.51.100.10:5432", LastErr: reject(gw, 10)}}, nodeHint},
		{"node's REJECT behind timeouts", []gate.Status{{Name: "tcp://198.51.100.10:5432", LastErr: timeout, LastCause: reject(gw, 10)}}, nodeHint},
		{"two probes, one sender", []gate.Status{
			{Name: "tcp://198.51.100.10:5432", LastErr: reject(gw, 10)},
			{Name: "icmp://198.51.100.10", LastErr: fmt.Errorf("wrapped: %w", reject(gw, 10))},
		}, nodeHint},
		{"remote firewall", []gate.Status{{Name: "tcp://198.51.100.10:5432", LastErr: reject(router, 13)}}, remoteHint},
		{"both", []gate.Status{
			{Name: "tcp://198.51.100.10:5432", LastErr: reject(gw, 10)},
			{Name: "dns://198.51.100.53/db.", LastErr: timeout, LastCause: reject(router, 13)},
		}, nodeHint + "; " + remoteHint},
		{"a ready condition's old reject", []gate.Status{{Name: "tcp://198.51.100.10:5432", Ready: true, LastErr: reject(gw, 10)}}, ""},
		{"host unreachable is no reject", []gate.Status{{Name: "tcp://198.51.100.10:5432", LastErr: unreachable}}, ""},
		{"blackhole: timeouts only", []gate.Status{{Name: "tcp://198.51.100.10:5432", LastErr: timeout}}, ""},
		{"a plain errno", []gate.Status{{Name: "tcp://198.51.100.10:5432", LastErr: syscall.EHOSTUNREACH}}, ""},
		{"the target's own port unreachable", []gate.Status{{Name: "dns://198.51.100.10/db.", LastErr: &probe.ICMPError{From: db, Type: 3, Code: 3, Errno: syscall.ECONNREFUSED}}}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := firewallHint(&gate.Report{Conditions: c.conds}, local); got != c.want {
				t.Errorf("firewallHint =\n%s\nwant\n%s", got, c.want)
			}
		})
	}
}

func TestNodeLocal(t *testing.T) {
	local := nodeLocal([]netip.Addr{netip.MustParseAddr("10.42.0.1"), netip.MustParseAddr("fe80::1%eth0")})
	for a, want := range map[string]bool{"10.42.0.1": true, "::ffff:10.42.0.1": true, "fe80::1": true, "127.0.0.1": true, "198.51.100.10": false} {
		if got := local(netip.MustParseAddr(a)); got != want {
			t.Errorf("local(%s) = %v, want %v", a, got, want)
		}
	}
}
