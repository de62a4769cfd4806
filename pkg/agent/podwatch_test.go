package agent

import (
	"strings"
	"testing"

	"github.com/netready/netready/pkg/config"
)

func TestWithK3sPodWatch(t *testing.T) {
	const kubeconfig = "clusters:\n- cluster:\n    server: https://127.0.0.1:6444\n    certificate-authority: /srv/k3s/agent/server-ca.crt\n" +
		"users:\n- name: user\n  user:\n    client-certificate: /srv/k3s/agent/client-kubelet.crt\n    client-key: /srv/k3s/agent/client-kubelet.key\n"
	plugin := []byte(`{"type": "netready", "timeout": "60s", "probes": ["tcp://10.0.0.9:5432"]}`)

	out, err := WithK3sPodWatch(plugin, "/srv/k3s", []byte(kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse(out)
	if err != nil {
		t.Fatalf("the agent's plugin object does not parse: %v\n%s", err, out)
	}
	if c.PodWatch == nil || c.PodWatch.Server != "https://127.0.0.1:6444" || c.PodWatch.KeyFile != "/srv/k3s/agent/client-kubelet.key" ||
		len(c.Base.Probes) != 1 || c.Base.Timeout.String() != "1m0s" {
		t.Errorf("parsed %+v / %+v, want the agent node's load balancer and the config kept", c.PodWatch, c.Base)
	}

	own := []byte(`{"type": "netready", "podWatch": {"server": "https://10.0.0.1:6443", "caFile": "/a", "certFile": "/b", "keyFile": "/c"}}`)
	if out, err := WithK3sPodWatch(own, "/srv/k3s", []byte(kubeconfig)); err != nil || string(out) != string(own) {
		t.Errorf("a config with its own podWatch came back as %s (%v), want unchanged", out, err)
	}
	if out, err := WithK3sPodWatch(plugin, "/srv/k3s", nil); err == nil || !strings.Contains(err.Error(), "no /srv/k3s/agent/kubelet.kubeconfig") || string(out) != string(plugin) {
		t.Errorf("without a kubeconfig: %s, %v; want the plugin unchanged and why", out, err)
	}
}
