package k3s

import (
	"fmt"
	"net/netip"
	"strings"
	"syscall"
)

// Host firewall rules as firewalld installs them, for the seed hunt (issue 10 part 2). firewalld
// is not run (it needs D-Bus and owns the whole netns's rules); its rules are written out as its
// source builds them (src/firewall/core/ipXtables.py build_default_rules, nftables.py), with the
// default zone (public: no forwarding) on every interface and, optionally, K3s's documented
// exception: the trusted zone (target ACCEPT) for the pod and service CIDRs.

// K3s's default pod and service CIDRs, which K3s's docs tell a firewalld user to trust
// (`firewall-cmd --permanent --zone=trusted --add-source=10.42.0.0/16`, and 10.43.0.0/16).
var k3sTrustedSources = []netip.Prefix{
	netip.MustParsePrefix("10.42.0.0/16"),
	netip.MustParsePrefix("10.43.0.0/16"),
}

// firewalldIptablesBase is the filter table's FORWARD part of firewalld's iptables backend
// (FirewallBackend=iptables) as iptables-restore --noflush input: conntrack accepts, the direct
// and zone dispatch chains, and the final REJECT with icmp-host-prohibited (%%REJECT%% in
// firewalld's source); the default zone adds nothing that accepts forwarded traffic. It appends
// to FORWARD: applied to an empty FORWARD before K3s starts, it is what a node where firewalld
// started first has, and K3s's own rules land before it (inserted) or after it (appended).
func firewalldIptablesBase() string {
	return `*filter
:FORWARD_direct - [0:0]
:FORWARD_dispatch - [0:0]
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT
-A FORWARD -i lo -j ACCEPT
-A FORWARD -m conntrack --ctstate INVALID -j DROP
-A FORWARD -j FORWARD_direct
-A FORWARD -j FORWARD_dispatch
-A FORWARD -j REJECT --reject-with icmp-host-prohibited
COMMIT
`
}

// firewalldIptablesTrusted adds the trusted zone (target ACCEPT) with the given sources to
// firewalldIptablesBase's dispatch, as `firewall-cmd --zone=trusted --add-source=P` does:
// forwarded traffic from or to P is accepted before the final REJECT.
func firewalldIptablesTrusted(trusted []netip.Prefix) string {
	var b strings.Builder
	b.WriteString("*filter\n:FWD_trusted - [0:0]\n")
	for _, p := range trusted {
		fmt.Fprintf(&b, "-A FORWARD_dispatch -s %s -j FWD_trusted\n", p)
	}
	for _, p := range trusted {
		fmt.Fprintf(&b, "-A FORWARD_dispatch -d %s -j FWD_trusted\n", p)
	}
	b.WriteString("-A FWD_trusted -j ACCEPT\nCOMMIT\n")
	return b.String()
}

// firewalldIptablesRemove undoes firewalldIptablesBase and firewalldIptablesTrusted without
// touching the rules K3s added around them: each FORWARD rule deleted by its spec, then
// firewalld's chains flushed and deleted (FWD_trusted may not exist: the caller ignores that).
func firewalldIptablesRemove() [][]string {
	var cmds [][]string
	for _, l := range strings.Split(firewalldIptablesBase(), "\n") {
		if strings.HasPrefix(l, "-A FORWARD ") {
			cmds = append(cmds, append([]string{"-D"}, strings.Fields(strings.TrimPrefix(l, "-A "))...))
		}
	}
	for _, c := range []string{"FORWARD_dispatch", "FWD_trusted", "FORWARD_direct"} {
		cmds = append(cmds, []string{"-F", c}, []string{"-X", c})
	}
	return cmds
}

// firewalldNftTable is the table firewalld's nftables backend (its default since 0.6) owns.
const firewalldNftTable = "firewalld"

// firewalldNftForward is the forward part of firewalld's nftables backend as an `nft -f` script:
// its own table inet firewalld, a forward base chain at priority filter + 10 that ends in
// `reject with icmpx type admin-prohibited`, zone dispatch by source for the trusted zone, the
// default zone (public, no forwarding) for everything else. A separate table: an accept in
// K3s's iptables-nft rules does not get a packet past it, whatever the order of starting.
func firewalldNftForward(trusted []netip.Prefix) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\n", firewalldNftTable, firewalldNftTable)
	fmt.Fprintf(&b, "table inet %s {\n", firewalldNftTable)
	b.WriteString("\tchain filter_FWD_public {\n\t}\n")
	if len(trusted) > 0 {
		b.WriteString("\tchain filter_FWD_trusted {\n\t\taccept\n\t}\n")
	}
	b.WriteString("\tchain filter_FORWARD_ZONES {\n")
	for _, p := range trusted {
		fmt.Fprintf(&b, "\t\tip saddr %s goto filter_FWD_trusted\n", p)
	}
	b.WriteString("\t\tgoto filter_FWD_public\n\t}\n")
	b.WriteString("\tchain filter_FORWARD {\n")
	b.WriteString("\t\ttype filter hook forward priority filter + 10; policy accept;\n")
	b.WriteString("\t\tct state { established, related } accept\n")
	b.WriteString("\t\tct status dnat accept\n")
	b.WriteString("\t\tiifname \"lo\" accept\n")
	b.WriteString("\t\tct state invalid drop\n")
	b.WriteString("\t\tjump filter_FORWARD_ZONES\n")
	b.WriteString("\t\treject with icmpx type admin-prohibited\n")
	b.WriteString("\t}\n}\n")
	return b.String()
}

// connectError names what a failed connect saw, as the app's error text says it (Go's net error
// wraps the errno's text): "refused" (ECONNREFUSED: an RST, or a port-unreachable), "no route"
// (EHOSTUNREACH: a host-unreachable or admin-prohibited ICMP, or no route), "net unreachable",
// "timeout" (no answer within the app's attempt timeout), or "other: <text>"; "" when there was
// no failure.
func connectError(text string) string {
	switch {
	case text == "":
		return ""
	case strings.Contains(text, syscall.ECONNREFUSED.Error()):
		return "refused"
	case strings.Contains(text, syscall.EHOSTUNREACH.Error()):
		return "no route"
	case strings.Contains(text, syscall.ENETUNREACH.Error()):
		return "net unreachable"
	case strings.Contains(text, "i/o timeout"), strings.Contains(text, "timed out"):
		return "timeout"
	default:
		return "other: " + text
	}
}
