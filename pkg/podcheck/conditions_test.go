package podcheck

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/gate"
	"github.com/netready/netready/pkg/netstate"
)

// fakeView answers as the test says and logs what it was asked.
type fakeView struct {
	err   error // what every call returns
	calls []string
}

func (v *fakeView) LinkUp(name string) error { return v.log("LinkUp " + name) }
func (v *fakeView) AddrReady(link string, a netip.Addr) error {
	return v.log(fmt.Sprintf("AddrReady %s %s", link, a))
}
func (v *fakeView) DefaultRoute(v4 bool) error   { return v.log(fmt.Sprintf("DefaultRoute v4=%v", v4)) }
func (v *fakeView) RouteTo(dst netip.Addr) error { return v.log("RouteTo " + dst.String()) }
func (v *fakeView) log(call string) error        { v.calls = append(v.calls, call); return v.err }

// fakeSockets makes no socket: it logs the family and protocol asked for.
type fakeSockets struct{ asked []string }

var errNoSockets = errors.New("fake: no sockets")

func (s *fakeSockets) Socket(domain, typ, proto int) (int, error) {
	fam := map[int]string{syscall.AF_INET: "inet", syscall.AF_INET6: "inet6"}[domain]
	s.asked = append(s.asked, fmt.Sprintf("%s/%d/%d", fam, typ, proto))
	return -1, errNoSockets
}

func planSpec(t *testing.T, gateway, defaultRoute bool, probes ...string) config.Spec {
	t.Helper()
	s := spec(t, probes...)
	s.Gateway, s.DefaultRoute = gateway, defaultRoute
	return s
}

var (
	a4, a6   = netip.MustParseAddr("10.42.0.5"), netip.MustParseAddr("fd42::5")
	gw4, gw6 = netip.MustParseAddr("10.42.0.1"), netip.MustParseAddr("fd42::1")
)

// TestConditionsPlan: which conditions, in which order, for which pod and
// spec, and what each local one asks the netns. No netns, no root.
func TestConditionsPlan(t *testing.T) {
	eth0 := func(addrs ...netip.Addr) []Link { return []Link{{Name: "eth0", Addrs: addrs}} }
	for _, tc := range []struct {
		name  string
		spec  config.Spec
		pod   Pod
		want  []string // "kind name"
		calls []string // the view, when every local condition is checked once
	}{
		{
			name: "IPv4 pod, K3s defaults, one probe",
			spec: planSpec(t, true, true, "tcp://10.15.21.167:9000"),
			pod:  Pod{Links: eth0(a4), Gateways: []netip.Addr{gw4}},
			want: []string{"local link eth0", "local address 10.42.0.5 on eth0", "local IPv4 default route",
				"local route to 10.15.21.167", "active gateway 10.42.0.1", "active tcp://10.15.21.167:9000"},
			calls: []string{"LinkUp eth0", "AddrReady eth0 10.42.0.5", "DefaultRoute v4=true", "RouteTo 10.15.21.167"},
		},
		{
			name: "dual stack: a default route and a gateway per family, v6 in brackets",
			spec: planSpec(t, true, true),
			pod:  Pod{Links: eth0(a4, a6), Gateways: []netip.Addr{gw4, gw6}},
			want: []string{"local link eth0", "local address 10.42.0.5 on eth0", "local address fd42::5 on eth0",
				"local IPv4 default route", "local IPv6 default route", "active gateway 10.42.0.1", "active gateway fd42::1"},
			calls: []string{"LinkUp eth0", "AddrReady eth0 10.42.0.5", "AddrReady eth0 fd42::5", "DefaultRoute v4=true", "DefaultRoute v4=false"},
		},
		{
			name: "IPv6 only",
			spec: planSpec(t, false, true),
			pod:  Pod{Links: eth0(a6)},
			want: []string{"local link eth0", "local address fd42::5 on eth0", "local IPv6 default route"},
		},
		{
			name: "gateway and defaultRoute off",
			spec: planSpec(t, false, false, "icmp://10.15.21.1"),
			pod:  Pod{Links: eth0(a4), Gateways: []netip.Addr{gw4}},
			want: []string{"local link eth0", "local address 10.42.0.5 on eth0", "local route to 10.15.21.1", "active icmp://10.15.21.1"},
		},
		{
			name: "two probes of one target: one route condition",
			spec: planSpec(t, false, false, "tcp://10.15.21.167:9000", "icmp://10.15.21.167", "dns://[fd15::53]/kubernetes.default"),
			pod:  Pod{},
			want: []string{"local route to 10.15.21.167", "local route to fd15::53",
				"active tcp://10.15.21.167:9000", "active icmp://10.15.21.167", "active dns://[fd15::53]/kubernetes.default"},
			calls: []string{"RouteTo 10.15.21.167", "RouteTo fd15::53"},
		},
		{
			name: "no links, no addresses: no default route asked",
			spec: planSpec(t, true, true),
			pod:  Pod{},
			want: nil,
		},
		{
			name: "two sandbox links",
			spec: planSpec(t, false, false),
			pod:  Pod{Links: []Link{{Name: "eth0", Addrs: []netip.Addr{a4}}, {Name: "net1"}}},
			want: []string{"local link eth0", "local address 10.42.0.5 on eth0", "local link net1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			view := &fakeView{}
			conds, err := Conditions(tc.spec, tc.pod, view, &fakeSockets{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range conds {
				got = append(got, c.Kind.String()+" "+c.Name)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("conditions\n %q\nwant\n %q", got, tc.want)
			}
			if len(view.calls) != 0 {
				t.Errorf("Conditions read the netns: %q; only the gate should", view.calls)
			}
			for _, c := range conds {
				if c.Kind == gate.Local {
					c.Check(t.Context())
				}
			}
			if tc.calls != nil && !slices.Equal(view.calls, tc.calls) {
				t.Errorf("view calls\n %q\nwant\n %q", view.calls, tc.calls)
			}
		})
	}
}

// TestLocalConditionErrors: what the view says becomes the condition's
// error, and what waiting cannot fix ends the gate (gate.Permanent).
func TestLocalConditionErrors(t *testing.T) {
	pod := Pod{Links: []Link{{Name: "eth0", Addrs: []netip.Addr{a4}}}}
	for _, tc := range []struct {
		name      string
		viewErr   error
		cond      string
		wantErr   string
		permanent bool
	}{
		{"link gone", netstate.ErrNoLink, "link eth0", "gone (was the pod deleted?)", true},
		{"link down", errors.New("administratively down"), "link eth0", "administratively down", false},
		{"address DAD failed", netstate.ErrDADFailed, "address 10.42.0.5 on eth0", "duplicate address detection failed", true},
		{"address tentative", errors.New("tentative"), "address 10.42.0.5 on eth0", "tentative", false},
		{"no default route", errors.New("no IPv4 default route"), "IPv4 default route", "no IPv4 default route", false},
		{"blackhole", errors.New("blackhole route"), "route to 10.15.21.167", "blackhole route", false},
		{"ready", nil, "route to 10.15.21.167", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conds, err := Conditions(planSpec(t, false, true, "icmp://10.15.21.167"), pod, &fakeView{err: tc.viewErr}, &fakeSockets{})
			if err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(conds, func(c gate.Condition) bool { return c.Name == tc.cond })
			if i < 0 {
				t.Fatalf("no condition %q", tc.cond)
			}
			err = conds[i].Check(t.Context())
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Check: %v, want nil", err)
			case tc.wantErr != "" && (err == nil || err.Error() != tc.wantErr):
				t.Fatalf("Check: %v, want %q", err, tc.wantErr)
			}
			if gate.IsPermanent(err) != tc.permanent {
				t.Errorf("IsPermanent(%v) = %v, want %v", err, gate.IsPermanent(err), tc.permanent)
			}
		})
	}
}

// TestActiveConditionsUseTheSockets: the gateway and the probes make their
// sockets through the pod's Sockets, in the gateway's and the target's
// family, and a socket error is the attempt's error.
func TestActiveConditionsUseTheSockets(t *testing.T) {
	socks := &fakeSockets{}
	pod := Pod{Links: []Link{{Name: "eth0", Addrs: []netip.Addr{a4, a6}}}, Gateways: []netip.Addr{gw6}}
	conds, err := Conditions(planSpec(t, true, false, "tcp://10.15.21.167:9000"), pod, &fakeView{}, socks)
	if err != nil {
		t.Fatal(err)
	}
	var asked []string
	for _, c := range conds {
		if c.Kind != gate.Active {
			continue
		}
		socks.asked = nil
		if err := c.Check(context.Background()); !errors.Is(err, errNoSockets) {
			t.Errorf("%s: Check = %v, want the Sockets' error", c.Name, err)
		}
		if len(socks.asked) == 0 {
			t.Errorf("%s: asked for no socket", c.Name)
			continue
		}
		asked = append(asked, c.Name+" "+strings.SplitN(socks.asked[0], "/", 2)[0])
	}
	if want := []string{"gateway fd42::1 inet6", "tcp://10.15.21.167:9000 inet"}; !slices.Equal(asked, want) {
		t.Errorf("sockets asked %q, want %q", asked, want)
	}
}

func TestConditionsBadProbe(t *testing.T) {
	s := planSpec(t, false, false)
	s.Probes = []config.Probe{{Scheme: "sctp", URL: "sctp://10.0.0.5:9", Addr: netip.MustParseAddr("10.0.0.5"), Port: 9}}
	_, err := Conditions(s, Pod{}, &fakeView{}, &fakeSockets{})
	if err == nil || !strings.HasPrefix(err.Error(), "sctp://10.0.0.5:9: ") || !strings.Contains(err.Error(), "unknown scheme") {
		t.Fatalf("err = %v, want one naming the probe and its scheme", err)
	}
}
