package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/netready/netready/pkg/install"
)

const k3sSubnetEnv = "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"

// TestDelegateConf checks the bridge config against the one K3S.md quotes for K3s's defaults.
func TestDelegateConf(t *testing.T) {
	k3sPlugin := k3sFlannel(t)
	for _, tc := range []struct {
		name, env, plugin, want, wantErr string
	}{{
		name:   "K3s defaults",
		env:    k3sSubnetEnv,
		plugin: k3sPlugin,
		want: `{"cniVersion":"1.0.0","name":"cbr0","type":"bridge",
 "hairpinMode":true,"forceAddress":true,"isDefaultGateway":true,"isGateway":true,
 "ipMasq":false,"mtu":1450,
 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.42.0.0/24"}]],"routes":[{"dst":"10.42.0.0/16"}]}}`,
	}, {
		name:   "dual-stack",
		env:    k3sSubnetEnv + "FLANNEL_IPV6_NETWORK=fd42::/56\nFLANNEL_IPV6_SUBNET=fd42::1/64\n",
		plugin: k3sPlugin,
		want: `{"cniVersion":"1.0.0","name":"cbr0","type":"bridge",
 "hairpinMode":true,"forceAddress":true,"isDefaultGateway":true,"isGateway":true,
 "ipMasq":false,"mtu":1450,
 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.42.0.0/24"}],[{"subnet":"fd42::/64"}]],
  "routes":[{"dst":"10.42.0.0/16"},{"dst":"fd42::/56"}]}}`,
	}, {
		name:   "flannel not masquerading: the bridge must",
		env:    strings.Replace(k3sSubnetEnv, "IPMASQ=true", "IPMASQ=false", 1),
		plugin: `{"type":"flannel","name":"cbr0","cniVersion":"0.3.1"}`,
		want: `{"cniVersion":"0.3.1","name":"cbr0","type":"bridge","isGateway":true,"ipMasq":true,"mtu":1450,
 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.42.0.0/24"}]],"routes":[{"dst":"10.42.0.0/16"}]}}`,
	}, {
		name:   "ipam object is the base, as in the real plugin",
		env:    k3sSubnetEnv,
		plugin: `{"type":"flannel","name":"cbr0","cniVersion":"1.0.0","ipam":{"dataDir":"/tmp/x","routes":[{"dst":"192.0.2.0/24"}]}}`,
		want: `{"cniVersion":"1.0.0","name":"cbr0","type":"bridge","isGateway":true,"ipMasq":false,"mtu":1450,
 "ipam":{"type":"host-local","dataDir":"/tmp/x","ranges":[[{"subnet":"10.42.0.0/24"}]],
  "routes":[{"dst":"192.0.2.0/24"},{"dst":"10.42.0.0/16"}]}}`,
	}, {
		name:    "delegate must not set name",
		env:     k3sSubnetEnv,
		plugin:  `{"type":"flannel","name":"cbr0","delegate":{"name":"x"}}`,
		wantErr: "must not have 'name'",
	}, {
		name:    "subnet.env incomplete",
		env:     "FLANNEL_NETWORK=10.42.0.0/16\n",
		plugin:  k3sPlugin,
		wantErr: "is missing FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "subnet.env")
			if err := os.WriteFile(path, []byte(tc.env), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := build(tc.plugin, path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var want any
			if err := json.Unmarshal([]byte(tc.want), &want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("delegate\n got %s\nwant %s", mustJSON(t, got), mustJSON(t, want))
			}
		})
	}
}

// build runs cmdAdd's config steps and returns the delegate as generic JSON.
func build(plugin, subnetFile string) (any, error) {
	n, err := loadConf([]byte(plugin))
	if err != nil {
		return nil, err
	}
	env, err := loadSubnetEnv(subnetFile)
	if err != nil {
		return nil, err
	}
	d, err := delegateConf(n, env)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	var generic any
	if err := json.Unmarshal(b, &generic); err != nil {
		return nil, err
	}
	return generic, nil
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// k3sFlannel is the flannel object of K3s's chain (install.K3sChain) as libcni hands it to the
// plugin: with the list's name and cniVersion.
func k3sFlannel(t *testing.T) string {
	t.Helper()
	var list struct {
		Name       string           `json:"name"`
		CNIVersion string           `json:"cniVersion"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(install.K3sChain, &list); err != nil {
		t.Fatal(err)
	}
	p := list.Plugins[0]
	p["name"], p["cniVersion"] = list.Name, list.CNIVersion
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
