package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/netready/netready/pkg/gate"
	"github.com/netready/netready/pkg/probe"
)

// k3sConfDir is where K3s's containerd reads conflists (default data dir),
// and where `netready install` chains netready.
const k3sConfDir = "/var/lib/rancher/k3s/agent/etc/cni/net.d"

// reproduce ends a timeout error with the command that runs the same wait
// by hand. The runtime names the netns, but not the file the config came
// from (CNI hands a plugin its object on stdin), so --conf names what the
// operator can find: the conflist of that network in the runtime's conf
// dir. The netns lives only as long as the sandbox: after the failed ADD
// the runtime deletes it, and the next try gets a new one.
func reproduce(netns, network, pod string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "to reproduce while the sandbox exists: netready check --netns %s --conf CONFLIST", shellWord(netns))
	if ns, name, ok := strings.Cut(pod, "/"); ok && ns != "" && name != "" {
		fmt.Fprintf(&b, " --pod %s", shellWord(pod))
	}
	if network != "" {
		fmt.Fprintf(&b, " (CONFLIST: the conflist named %q in the runtime's CNI conf dir, on K3s %s)", network, k3sConfDir)
	} else {
		fmt.Fprintf(&b, " (CONFLIST: the conflist chaining netready in the runtime's CNI conf dir, on K3s %s)", k3sConfDir)
	}
	return b.String()
}

// shellWord quotes s for a POSIX shell when it holds anything but the
// characters of a plain path.
func shellWord(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-:=+@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// prevResultError says that err, found in prevResult, is the previous
// plugin's: the runtime builds prevResult from the output of the plugin
// listed before netready in the conflist. CNI does not tell a plugin which
// one that was, so the message names the place in the chain, not a type.
func prevResultError(network string, err error) error {
	where := "the plugin before netready in its conflist"
	if network != "" {
		where = fmt.Sprintf("the plugin before netready in conflist %q", network)
	}
	code, msg := uint(types.ErrDecodingFailure), err.Error()
	var te *types.Error
	if errors.As(err, &te) {
		code, msg = te.Code, te.Msg
	}
	msg = strings.TrimPrefix(msg, "prevResult: ")
	return types.NewError(code, fmt.Sprintf("prevResult (the result of %s, passed on by the runtime) is not usable: %s; check that plugin and the conflist's cniVersion (netready passes the result on untouched)", where, msg), "")
}

// rejects lists the distinct senders of the firewall rejects (an ICMP
// administratively prohibited, or a port unreachable no host sends of its
// own) behind the report's unmet conditions, in the conditions' order.
func rejects(r *gate.Report) []netip.Addr {
	var from []netip.Addr
	for _, c := range r.Unmet() {
		for _, err := range []error{c.LastErr, c.LastCause} {
			var ie *probe.ICMPError
			if errors.As(err, &ie) && ie.Reject && !slices.Contains(from, ie.From) {
				from = append(from, ie.From)
			}
		}
	}
	return from
}

// firewallHint says, in an operator's words, what to do when a firewall's
// reject is why conditions are unmet; "" when no reject was seen. local
// says whether an address is the node's own (the pod's gateway, an
// address of the node's netns): an ICMP error from there was made on this
// node, by its firewall (or a prohibit route). On K3s behind firewalld's
// iptables backend, flannel's accept sits behind firewalld's REJECT and
// the pod's traffic gets out only once kube-router has learnt the pod's
// IP, after the ADD: netready cannot wait that out, the trusted zone K3s's
// docs require cures it.
func firewallHint(r *gate.Report, local func(netip.Addr) bool) string {
	from := rejects(r)
	if len(from) == 0 {
		return ""
	}
	var node, remote []string
	for _, a := range from {
		if local(a) {
			node = append(node, a.String())
		} else {
			remote = append(remote, a.String())
		}
	}
	var parts []string
	if len(node) > 0 {
		parts = append(parts, fmt.Sprintf("a firewall on this node rejected the pod's traffic (%s is this node's own address); "+
			"with firewalld, put the pod and service CIDRs in its trusted zone, as K3s's docs require: "+
			"firewall-cmd --permanent --zone=trusted --add-source=10.42.0.0/16 --add-source=10.43.0.0/16 && firewall-cmd --reload "+
			"(K3s's default CIDRs: use your cluster's); otherwise look at the node's FORWARD rules (iptables -S FORWARD, nft list ruleset) "+
			"for a REJECT the pod's traffic meets before it is accepted", strings.Join(node, ", ")))
	}
	if len(remote) > 0 {
		parts = append(parts, fmt.Sprintf("a firewall beyond this node rejected the pod's traffic (%s is not this node's address); "+
			"look at that firewall's rules for traffic from this node's pods (masqueraded as the node's address unless the CNI says otherwise)",
			strings.Join(remote, ", ")))
	}
	return strings.Join(parts, "; ")
}

// nodeLocal is firewallHint's local for a pod: its gateways and the
// addresses of the netns netready runs in, the node's (listed only when a
// reject's sender is not a gateway).
func nodeLocal(gateways []netip.Addr) func(netip.Addr) bool {
	nodeAddrs := sync.OnceValue(func() []netip.Addr {
		var addrs []netip.Addr
		if ifAddrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range ifAddrs {
				if p, err := netip.ParsePrefix(a.String()); err == nil {
					addrs = append(addrs, p.Addr().Unmap())
				}
			}
		}
		return addrs
	})
	return func(a netip.Addr) bool {
		a = a.WithZone("").Unmap()
		return slices.ContainsFunc(gateways, func(g netip.Addr) bool { return g.WithZone("").Unmap() == a }) || slices.Contains(nodeAddrs(), a)
	}
}
