package main

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
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
			pod, err := podFromResult(&skel.CmdArgs{Netns: "/var/run/netns/p", IfName: "eth0"}, &tc.res)
			if tc.wantErr != "" {
				var e *types.Error
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !asCNI(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
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

func asCNI(err error, e **types.Error) bool {
	var ce *types.Error
	if x, ok := err.(*types.Error); ok {
		ce = x
	}
	*e = ce
	return ce != nil
}

func TestParseNeedsPrevResult(t *testing.T) {
	_, _, err := parse([]byte(`{"cniVersion":"1.0.0","name":"cbr0","type":"netready"}`))
	e, ok := err.(*types.Error)
	if !ok || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, "must be chained after") {
		t.Fatalf("err=%v, want code 7 saying netready must be chained", err)
	}
}

func TestCLIUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		out  string
	}{
		{nil, exitUsage, "netready check --netns"},
		{[]string{"help"}, exitReady, "netready check --netns"},
		{[]string{"--version"}, exitReady, "netready dev (CNI 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)"},
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"check"}, exitUsage, "--netns and --conf are required"},
		// A file that cannot be read is the machine's trouble, not usage.
		{[]string{"check", "--netns", "/x", "--conf", "/nonexistent/conf"}, exitCannot, "no such file"},
		{[]string{"explain", "--conf", "/nonexistent/conf"}, exitCannot, "no such file"},
		{[]string{"install", "--root", "/nonexistent/root", "--dry-run"}, exitFailed, "--root /nonexistent/root is not a directory"},
		{[]string{"uninstall", "--root", "/nonexistent/root", "--dry-run"}, exitFailed, "--root /nonexistent/root is not a directory"},
		{[]string{"install", "--root", "/", "--restart"}, exitUsage, "cannot be combined with --root"},
		{[]string{"stats", "--log", "/nonexistent/netready.log"}, exitCannot, "no such file"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out bytes.Buffer
			if code := runCLI(tc.args, &out, &out); code != tc.code || !strings.Contains(out.String(), tc.out) {
				t.Errorf("exit %d, output %q; want exit %d containing %q", code, out.String(), tc.code, tc.out)
			}
		})
	}
}
