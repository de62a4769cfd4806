package podcheck

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/netready/netready/pkg/podns"
)

func TestPodFromResult(t *testing.T) {
	one, two := 1, 2
	ip := func(s string, iface *int, gw string) *current.IPConfig {
		p := netip.MustParsePrefix(s)
		c := &current.IPConfig{Address: net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, Interface: iface}
		if gw != "" {
			c.Gateway = netip.MustParseAddr(gw).AsSlice()
		}
		return c
	}
	ifaces := []*current.Interface{{Name: "cni0"}, {Name: "eth0", Sandbox: "/var/run/netns/p"}}
	tests := []struct {
		name    string
		res     current.Result
		want    string // links as "name=addr,addr" joined by ' ', then " gw=" gateways
		wantErr string
	}{
		{"dual stack on eth0", current.Result{Interfaces: ifaces, IPs: []*current.IPConfig{
			ip("10.42.0.5/24", &one, "10.42.0.1"), ip("fd42::5/64", &one, "fd42::1")}},
			"eth0=10.42.0.5,fd42::5 gw=10.42.0.1,fd42::1", ""},
		{"host-side address ignored", current.Result{Interfaces: ifaces, IPs: []*current.IPConfig{
			ip("10.42.0.1/24", new(int), ""), ip("10.42.0.5/24", &one, "")}},
			"eth0=10.42.0.5 gw=", ""},
		{"no interface index: the runtime's ifname", current.Result{Interfaces: ifaces, IPs: []*current.IPConfig{
			ip("10.42.0.5/24", nil, "10.42.0.1")}},
			"eth0=10.42.0.5 gw=10.42.0.1", ""},
		{"no IPs", current.Result{Interfaces: ifaces}, "eth0= gw=", ""},
		{"index out of range", current.Result{Interfaces: ifaces, IPs: []*current.IPConfig{
			ip("10.42.0.5/24", &two, "")}}, "", "ips[0].interface is 2, but there are 2 interfaces"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod, err := PodFromResult("/var/run/netns/p", "eth0", &tc.res)
			if tc.wantErr != "" {
				var e *types.Error
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
					t.Fatalf("err=%v, want code 7 containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var parts []string
			for _, l := range pod.Links {
				var as []string
				for _, a := range l.Addrs {
					as = append(as, a.String())
				}
				parts = append(parts, l.Name+"="+strings.Join(as, ","))
			}
			var gws []string
			for _, g := range pod.Gateways {
				gws = append(gws, g.String())
			}
			if got := strings.Join(parts, " ") + " gw=" + strings.Join(gws, ","); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestPodFromNetNS: without prevResult, the pod is what its netns shows.
func TestPodFromNetNS(t *testing.T) {
	want, _, _ := testPod(t)
	n, err := podns.Open(want.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	got, err := PodFromNetNS(n)
	if err != nil {
		t.Fatal(err)
	}
	if got.NetNS != want.NetNS || len(got.Links) != 1 || got.Links[0].Name != "eth0" ||
		!slices.Equal(got.Links[0].Addrs, want.Links[0].Addrs) || !slices.Equal(got.Gateways, want.Gateways) {
		t.Errorf("PodFromNetNS = %+v, want %+v", got, want)
	}
}
