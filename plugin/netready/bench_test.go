package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	cniversion "github.com/containernetworking/cni/pkg/version"
)

// k3sResult is what K3s's chain hands netready: bridge's result (host-local's dual-stack addresses,
// cni0, the host veth and the pod's eth0) passed on by portmap and bandwidth.
func k3sResult() *current.Result {
	ipnet := func(s string) net.IPNet {
		p := netip.MustParsePrefix(s)
		return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	}
	eth0 := 2
	return &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: "cni0", Mac: "5a:0b:0c:7e:2f:11"},
			{Name: "veth6f3c2a1b", Mac: "9e:41:d2:03:aa:07"},
			{Name: "eth0", Mac: "0a:58:0a:2a:00:05", Sandbox: "/var/run/netns/cni-4b1d5f0e-7a2c-9e13-62f0-3c5d8a9b0e41"},
		},
		IPs: []*current.IPConfig{
			{Interface: &eth0, Address: ipnet("10.42.0.5/24"), Gateway: net.ParseIP("10.42.0.1")},
			{Interface: &eth0, Address: ipnet("fd42::5/64"), Gateway: net.ParseIP("fd42::1")},
		},
		Routes: []*types.Route{
			{Dst: ipnet("10.42.0.0/16")},
			{Dst: ipnet("0.0.0.0/0"), GW: net.ParseIP("10.42.0.1")},
			{Dst: ipnet("fd42::/56")},
			{Dst: ipnet("::/0"), GW: net.ParseIP("fd42::1")},
		},
	}
}

// prevResultAt is k3sResult as libcni passes it to the last plugin of a list at version v: as
// raw JSON in that version.
func prevResultAt(tb testing.TB, v string) json.RawMessage {
	tb.Helper()
	r, err := k3sResult().GetAsVersion(v)
	if err != nil {
		tb.Fatal(err)
	}
	raw, err := json.Marshal(r)
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

// BenchmarkPrevResult measures the prevResult path of every ADD at each cniVersion netready
// speaks, as cmdAdd runs it:
//   - convert: version.ParsePrevResult and current.NewResultFromResult on the decoded config,
//     then what types.PrintResult does (GetAsVersion, indented JSON) with the output discarded;
//   - stdin: the same from the raw stdin, through the plugin's own parse (config.Parse first).
func BenchmarkPrevResult(b *testing.B) {
	for _, v := range supported.SupportedVersions() {
		raw := prevResultAt(b, v)
		stdin := fmt.Appendf(nil, `{"cniVersion":%q,"name":"cbr0","type":"netready","probes":["tcp://198.51.100.10:5432"],"prevResult":%s}`, v, raw)
		var decoded types.PluginConf
		if err := json.Unmarshal(stdin, &decoded); err != nil {
			b.Fatal(err)
		}

		b.Run("convert/"+v, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				conf := decoded
				conf.RawPrevResult = maps.Clone(decoded.RawPrevResult) // ParsePrevResult consumes it
				if err := cniversion.ParsePrevResult(&conf); err != nil {
					b.Fatal(err)
				}
				if _, err := current.NewResultFromResult(conf.PrevResult); err != nil {
					b.Fatal(err)
				}
				if err := printResult(conf.PrevResult, conf.CNIVersion); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("stdin/"+v, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				conf, _, err := parse(stdin)
				if err != nil {
					b.Fatal(err)
				}
				if err := printResult(conf.PrevResult, conf.CNIVersion); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// printResult is what ADD prints, encoded and discarded.
func printResult(r types.Result, v string) error {
	_, err := encodeResult(r, v)
	return err
}

// TestPrevResultRoundTrip keeps the benchmark honest: at every version, what ADD prints is
// prevResult, unchanged.
func TestPrevResultRoundTrip(t *testing.T) {
	for _, v := range supported.SupportedVersions() {
		t.Run(v, func(t *testing.T) {
			raw := prevResultAt(t, v)
			stdin := fmt.Appendf(nil, `{"cniVersion":%q,"name":"cbr0","type":"netready","prevResult":%s}`, v, raw)
			conf, _, err := parse(stdin)
			if err != nil {
				t.Fatal(err)
			}
			printed, err := encodeResult(conf.PrevResult, v) // what ADD prints
			if err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			if err := json.Compact(&got, printed); err != nil {
				t.Fatalf("printed %s: %v", printed, err)
			}
			if got.String() != string(raw) {
				t.Errorf("printed\n%s\nwant prevResult\n%s", got.String(), raw)
			}
		})
	}
}
