package install

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/pkg/config"
)

func TestK3sPodWatch(t *testing.T) {
	const dd = "/srv/k3s"
	tests := []struct {
		name       string
		kubeconfig string // "-" = no file
		want       *PodWatch
		wantErr    string
	}{
		{"server", k3sKubeletKubeconfig("https://127.0.0.1:6443", dd),
			&PodWatch{Server: "https://127.0.0.1:6443", CAFile: dd + "/agent/server-ca.crt", CertFile: dd + "/agent/client-kubelet.crt", KeyFile: dd + "/agent/client-kubelet.key"}, ""},
		{"agent, through K3s's load balancer", k3sKubeletKubeconfig("https://127.0.0.1:6444", dd),
			&PodWatch{Server: "https://127.0.0.1:6444", CAFile: dd + "/agent/server-ca.crt", CertFile: dd + "/agent/client-kubelet.crt", KeyFile: dd + "/agent/client-kubelet.key"}, ""},
		{"IPv6 server", k3sKubeletKubeconfig("https://[::1]:6443", dd),
			&PodWatch{Server: "https://[::1]:6443", CAFile: dd + "/agent/server-ca.crt", CertFile: dd + "/agent/client-kubelet.crt", KeyFile: dd + "/agent/client-kubelet.key"}, ""},
		{"file names missing: K3s's own", "clusters:\n- cluster:\n    server: \"https://10.0.0.1:6443\"\n",
			&PodWatch{Server: "https://10.0.0.1:6443", CAFile: dd + "/agent/server-ca.crt", CertFile: dd + "/agent/client-kubelet.crt", KeyFile: dd + "/agent/client-kubelet.key"}, ""},
		{"no file", "-", nil, "no /srv/k3s/agent/kubelet.kubeconfig (K3s has not started its agent yet?)"},
		{"no server", "apiVersion: v1\n", nil, "/srv/k3s/agent/kubelet.kubeconfig names no server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var kc []byte
			if tt.kubeconfig != "-" {
				kc = []byte(tt.kubeconfig)
			}
			got, err := K3sPodWatch(dd, kc)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || *got != *tt.want {
				t.Fatalf("K3sPodWatch = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// TestInstallFillsPodWatch: install writes podWatch from the kubelet's
// credentials by default, and the plugin's own parser accepts it;
// NoPodWatch leaves it out.
func TestInstallFillsPodWatch(t *testing.T) {
	for _, off := range []bool{false, true} {
		n := newFakeNode(t, k3sLive)
		o := n.opts()
		o.NoPodWatch = off
		steps, notes, err := n.plan(o)
		if err != nil {
			t.Fatal(err)
		}
		var chain []byte
		for _, s := range steps {
			if s.Op == OpConflist {
				chain = s.Data
			}
		}
		var top struct{ Plugins []json.RawMessage }
		if err := json.Unmarshal(chain, &top); err != nil || len(top.Plugins) == 0 {
			t.Fatalf("no conflist step: %v", err)
		}
		c, err := config.Parse(top.Plugins[len(top.Plugins)-1])
		if err != nil {
			t.Fatal(err)
		}
		want := &config.PodWatch{Server: "https://127.0.0.1:6443", CAFile: DefaultDataDir + "/agent/server-ca.crt",
			CertFile: DefaultDataDir + "/agent/client-kubelet.crt", KeyFile: DefaultDataDir + "/agent/client-kubelet.key", After: time.Second}
		switch {
		case off && c.PodWatch != nil:
			t.Errorf("NoPodWatch: the chain has podWatch %+v", c.PodWatch)
		case !off && (c.PodWatch == nil || *c.PodWatch != *want):
			t.Errorf("podWatch %+v, want %+v", c.PodWatch, want)
		}
		for _, note := range notes {
			if strings.Contains(note, "podWatch") {
				t.Errorf("note %q with the kubelet's kubeconfig there", note)
			}
		}
	}
}
