package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/internal/logrec"
)

// rejectTable holds a test's REJECT rule, in the node or router netns of its own bed.
const rejectTable = "nr_reject"

// rejectIn adds an nft forward rule in n that rejects what pods send to the db with reject (nft's
// words, e.g. "reject with icmp type host-prohibited"), as firewalld's last FORWARD rule does.
func rejectIn(ctx context.Context, t *testing.T, n *testbed.Netns, reject string) {
	t.Helper()
	script := fmt.Sprintf(`table inet %s {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr %s ip daddr %s %s
	}
}
`, rejectTable, testbed.ClusterCIDR, testbed.DBAddr, reject)
	if _, err := n.ExecInput(ctx, script, "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Exec(context.Background(), "nft", "delete", "table", "inet", rejectTable) })
}

// TestNetreadyFirewallReject: a path a firewall rejects fails the ADD after its timeout as any
// other (code 11, outcome timeout), and its message names the reject (who sent it, which ICMP
// error) and what to do; a path that drops silently gets no such hint. The node's REJECT is
// firewalld's iptables backend's last FORWARD rule; the ICMP error it makes comes from cni0's
// address, the pod's gateway, so the message calls it this node's firewall.
func TestNetreadyFirewallReject(t *testing.T) {
	for _, tc := range []struct {
		name    string
		block   func(ctx context.Context, t *testing.T, b *testbed.Bed)
		want    []string // in the error message, in this order
		wantLog string   // in the log's condition (error or cause); "" for none with "rejected"
	}{
		{"REJECT host-prohibited on node", func(ctx context.Context, t *testing.T, b *testbed.Bed) {
			rejectIn(ctx, t, b.Node, "reject with icmp type host-prohibited")
		}, []string{
			testbed.ProbeDB + ": ", "rejected by " + testbed.PodGateway.String() + " (ICMP host administratively prohibited)",
			"a firewall on this node rejected the pod's traffic (" + testbed.PodGateway.String() + " is this node's own address)",
			"firewall-cmd --permanent --zone=trusted --add-source=10.42.0.0/16 --add-source=10.43.0.0/16 && firewall-cmd --reload",
			"iptables -S FORWARD", "to reproduce",
		}, "rejected by " + testbed.PodGateway.String() + " (ICMP host administratively prohibited)"},
		{"reject admin-prohibited in router", func(ctx context.Context, t *testing.T, b *testbed.Bed) {
			rejectIn(ctx, t, b.Router, "reject with icmpx type admin-prohibited")
		}, []string{
			"rejected by " + testbed.RouterUplink.String() + " (ICMP communication administratively prohibited)",
			"a firewall beyond this node rejected the pod's traffic (" + testbed.RouterUplink.String() + " is not this node's address)",
			"to reproduce",
		}, "rejected by " + testbed.RouterUplink.String() + " (ICMP communication administratively prohibited)"},
		{"blackhole route on node", func(ctx context.Context, t *testing.T, b *testbed.Bed) { fault(t)(b.BlackholeNode(ctx)) },
			[]string{testbed.ProbeDB + ": no answer", "to reproduce"}, ""},
		{"nft drop in router", func(ctx context.Context, t *testing.T, b *testbed.Bed) { fault(t)(b.BlockRouter(ctx)) },
			[]string{testbed.ProbeDB + ": no answer", "to reproduce"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			b := netreadyBed(t, false)
			list, logFile := netreadyList(t, b, map[string]any{
				"probes":  []string{testbed.ProbeDB},
				"timeout": "2s",
			})
			pod := newPod(t, b)
			tc.block(ctx, t, b)

			e, _ := addTryAgain(ctx, t, b, list, pod, "a blocked path")
			rest := e.Msg
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Errorf("ADD error %q\nwants %q (after the parts before it)", e.Msg, w)
					break
				}
				rest = rest[i+len(w):]
			}
			if tc.wantLog == "" && (strings.Contains(e.Msg, "rejected") || strings.Contains(e.Msg, "firewall")) {
				t.Errorf("ADD error %q names a firewall's reject, but nothing rejected (packets vanished)", e.Msg)
			}

			rec := lastRecord(t, logFile, "ADD")
			c := rec.condition(t, testbed.ProbeDB)
			t.Logf("log: outcome %s, %s: error %q cause %q after %d attempts", rec.Outcome, c.Name, c.Error, c.Cause, c.Attempts)
			if rec.Outcome != logrec.Timeout || rec.Error != e.Msg {
				t.Errorf("log: outcome %q error %q, want timeout with the ADD's error", rec.Outcome, rec.Error)
			}
			seen := c.Error + " " + c.Cause
			switch {
			case tc.wantLog != "" && !strings.Contains(seen, tc.wantLog):
				t.Errorf("log: %s error %q cause %q, want %q in one of them", c.Name, c.Error, c.Cause, tc.wantLog)
			case tc.wantLog == "" && strings.Contains(seen, "rejected"):
				t.Errorf("log: %s error %q cause %q names a reject", c.Name, c.Error, c.Cause)
			}
			if err := b.Del(ctx, list, pod); err != nil {
				t.Errorf("DEL after the failed ADD: %v", err)
			}
		})
	}
}
