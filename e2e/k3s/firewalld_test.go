package k3s

import (
	"strings"
	"testing"
)

// These need neither root nor K3s.

func TestConnectError(t *testing.T) {
	tests := []struct{ text, want string }{
		{"", ""},
		{"dial tcp 198.51.100.10:5432: connect: connection refused", "refused"},
		{"dial tcp 198.51.100.10:5432: connect: no route to host", "no route"},
		{"dial tcp 198.51.100.10:5432: connect: network is unreachable", "net unreachable"},
		{"dial tcp 198.51.100.10:5432: i/o timeout", "timeout"},
		{"dial tcp: lookup db: no such host", "other: dial tcp: lookup db: no such host"},
	}
	for _, tt := range tests {
		if got := connectError(tt.text); got != tt.want {
			t.Errorf("connectError(%q) = %q, want %q", tt.text, got, tt.want)
		}
	}
}

func TestFirewalldRules(t *testing.T) {
	base := firewalldIptablesBase()
	var forward []string
	for _, l := range strings.Split(base, "\n") {
		if strings.HasPrefix(l, "-A FORWARD ") {
			forward = append(forward, l)
		}
	}
	if len(forward) == 0 || forward[len(forward)-1] != "-A FORWARD -j REJECT --reject-with icmp-host-prohibited" {
		t.Errorf("firewalld's iptables FORWARD must end in its REJECT with icmp-host-prohibited; got %q", forward)
	}
	if strings.Contains(base, "ACCEPT\n") && !strings.Contains(base, "--ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT") {
		t.Errorf("the only accepts before the REJECT are conntrack's and lo's:\n%s", base)
	}
	trusted := firewalldIptablesTrusted(k3sTrustedSources)
	for _, want := range []string{"-A FORWARD_dispatch -s 10.42.0.0/16 -j FWD_trusted", "-A FORWARD_dispatch -d 10.43.0.0/16 -j FWD_trusted", "-A FWD_trusted -j ACCEPT"} {
		if !strings.Contains(trusted, want) {
			t.Errorf("trusted zone rules lack %q:\n%s", want, trusted)
		}
	}
	rm := firewalldIptablesRemove()
	if len(rm) != len(forward)+6 || rm[len(forward)-1][1] != "FORWARD" || rm[len(forward)-1][len(rm[len(forward)-1])-1] != "icmp-host-prohibited" {
		t.Errorf("remove must delete each FORWARD rule by spec, then flush and delete 3 chains: %q", rm)
	}

	nft := firewalldNftForward(nil)
	if strings.Contains(nft, "filter_FWD_trusted") {
		t.Errorf("no trusted zone asked for:\n%s", nft)
	}
	if !strings.Contains(nft, "priority filter + 10") || !strings.HasSuffix(strings.TrimSpace(nft), "reject with icmpx type admin-prohibited\n\t}\n}") {
		t.Errorf("firewalld's nft forward chain: priority filter + 10, ending in its reject:\n%s", nft)
	}
	nftT := firewalldNftForward(k3sTrustedSources)
	if !strings.Contains(nftT, "ip saddr 10.42.0.0/16 goto filter_FWD_trusted") || !strings.Contains(nftT, "ip saddr 10.43.0.0/16 goto filter_FWD_trusted") {
		t.Errorf("trusted sources must dispatch to the trusted zone:\n%s", nftT)
	}
}
