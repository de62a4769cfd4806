package install

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/netready/netready/pkg/config"
)

func TestBuildOwned(t *testing.T) {
	obj := []byte(`{"type":"netready","probes":["icmp://10.0.0.1"]}`)
	tests := []struct {
		name    string
		primary string
		wantErr string // "" = success
		check   func(t *testing.T, top map[string]any)
	}{
		{name: "k3s chain", primary: k3sLive, check: func(t *testing.T, top map[string]any) {
			if top["name"] != "cbr0" || top["cniVersion"] != "1.0.0" {
				t.Errorf("name, cniVersion = %v, %v; want the primary's cbr0, 1.0.0", top["name"], top["cniVersion"])
			}
		}},
		{name: "keeps the primary's version and unknown fields", primary: `{"name":"k","cniVersion":"1.1.0","disableCheck":true,"x.io/y":{"a":[1,2]},"plugins":[{"type":"flannel","delegate":{"mtu":1400},"unknown":"kept"}]}`,
			check: func(t *testing.T, top map[string]any) {
				if top["cniVersion"] != "1.1.0" || top["disableCheck"] != true {
					t.Errorf("top = %v; want cniVersion 1.1.0 and disableCheck kept", top)
				}
				if y, _ := json.Marshal(top["x.io/y"]); string(y) != `{"a":[1,2]}` {
					t.Errorf("x.io/y = %s; want it kept", y)
				}
				first := top["plugins"].([]any)[0].(map[string]any)
				if first["unknown"] != "kept" || first["delegate"].(map[string]any)["mtu"] != 1400.0 {
					t.Errorf("plugins[0] = %v; want every field kept", first)
				}
			}},
		{name: "primary already holds netready", primary: `{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel"},{"type":"netready"}]}`, wantErr: "already holds"},
		{name: "not JSON", primary: `{"name":`, wantErr: "not a JSON object"},
		{name: "no name", primary: `{"cniVersion":"1.0.0","plugins":[{"type":"flannel"}]}`, wantErr: `no "name"`},
		{name: "no cniVersion", primary: `{"name":"cbr0","plugins":[{"type":"flannel"}]}`, wantErr: `no "cniVersion"`},
		{name: "single plugin conf", primary: `{"name":"cbr0","cniVersion":"1.0.0","type":"bridge"}`, wantErr: `no "plugins"`},
		{name: "plugin not an object", primary: `{"name":"cbr0","cniVersion":"1.0.0","plugins":[3]}`, wantErr: "plugins[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := BuildOwned([]byte(tt.primary), obj)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v; want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l, err := libcni.ConfListFromBytes(out)
			if err != nil {
				t.Fatalf("libcni cannot load the result: %v\n%s", err, out)
			}
			last := l.Plugins[len(l.Plugins)-1]
			if last.Network.Type != "netready" {
				t.Fatalf("last plugin is %q; want netready", last.Network.Type)
			}
			var top map[string]any
			if err := json.Unmarshal(out, &top); err != nil {
				t.Fatal(err)
			}
			tt.check(t, top)
			// The plugin sees its object with the list's name and version, as Parse expects.
			p, err := config.FindPlugin(out)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := config.Parse(p); err != nil {
				t.Fatalf("netready's parser rejects its object in the built list: %v", err)
			}
		})
	}
}

func TestBuildOwnedErrPrimaryHasNetready(t *testing.T) {
	_, err := BuildOwned([]byte(`{"name":"a","cniVersion":"1.0.0","plugins":[{"type":"netready"}]}`), []byte(`{"type":"netready"}`))
	if !errors.Is(err, ErrPrimaryHasNetready) {
		t.Fatalf("err = %v; want ErrPrimaryHasNetready", err)
	}
}

func TestPluginObject(t *testing.T) {
	tests := []struct {
		name    string
		s       Settings
		want    string
		wantErr string
	}{
		{name: "defaults", s: Settings{},
			want: `{"type":"netready","capabilities":{"io.kubernetes.cri.pod-annotations":true},"timeout":"60s","onTimeout":"fail","probes":[]}`},
		{name: "every setting", s: Settings{Probes: []string{"tcp://10.0.0.5:5432", "icmp://10.0.0.1"}, Timeout: "45s", OnTimeout: "allow", SkipNamespaces: []string{"kube-system", "monitoring"}, LogFile: "/var/log/netready/netready.log"},
			want: `{"type":"netready","capabilities":{"io.kubernetes.cri.pod-annotations":true},"timeout":"45s","onTimeout":"allow","probes":["tcp://10.0.0.5:5432","icmp://10.0.0.1"],"skip":{"namespaces":["kube-system","monitoring"]},"logFile":"/var/log/netready/netready.log"}`},
		{name: "a probe by name", s: Settings{Probes: []string{"tcp://db.example:5432"}}, wantErr: "probes[0]"},
		{name: "timeout too long", s: Settings{Timeout: "5m"}, wantErr: "timeout"},
		{name: "not a duration", s: Settings{Timeout: "thirty"}, wantErr: "timeout"},
		{name: "bad onTimeout", s: Settings{OnTimeout: "retry"}, wantErr: "onTimeout"},
		{name: "relative log file", s: Settings{LogFile: "netready.log"}, wantErr: "logFile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PluginObject(tt.s)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "--probe") {
					t.Fatalf("err = %v; want one naming %q and the flags to fix", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestChainHasNetready(t *testing.T) {
	for in, want := range map[string]bool{
		k3sLive: false,
		`{"name":"a","cniVersion":"1.0.0","plugins":[{"type":"flannel"},{"type":"netready"}]}`: true,
		`{"name":"a"`: false,
	} {
		if got := ChainHasNetready([]byte(in)); got != want {
			t.Errorf("ChainHasNetready(%.40s) = %v; want %v", in, got, want)
		}
	}
}
