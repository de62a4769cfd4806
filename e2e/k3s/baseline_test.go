package k3s

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBaseline: K3s's own chain (flannel, portmap, bandwidth, no netready) runs a pod that
// reaches the db outside the cluster, and the version K3s reports is recorded.
func TestBaseline(t *testing.T) {
	n := need(t)
	ctx := t.Context()
	var version struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := n.API.Do(ctx, "GET", "/version", nil, &version); err != nil {
		t.Fatal(err)
	}
	figures.Set("k3s", map[string]any{"version": version.GitVersion})
	t.Logf("K3s server version %s", version.GitVersion)
	conf, err := os.ReadFile(filepath.Join(n.CNIConfDir(), "10-flannel.conflist"))
	if err != nil {
		t.Fatalf("K3s wrote no chain: %v", err)
	}
	if !strings.Contains(string(conf), `"type":"flannel"`) || strings.Contains(string(conf), "netready") {
		t.Fatalf("10-flannel.conflist is not K3s's built-in chain:\n%s", conf)
	}
	if err := n.CreateNamespace(ctx, "e2e-baseline"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p := PodSpec{Namespace: "e2e-baseline", Name: "base-1"}
	if err := n.Apply(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WaitPhase(ctx, p.Namespace, p.Name, 2*time.Minute, "Succeeded"); err != nil {
		t.Fatal(err)
	}
	r, err := n.AppReport(ctx, p.Namespace, p.Name, "app")
	if err != nil {
		t.Fatal(err)
	}
	if r.ConnectedNS == 0 {
		t.Fatalf("the app never reached the db: %+v", r)
	}
	t.Logf("pod Succeeded %v after apply; the app connected %.1f ms after it started (%d attempts, first failed: %v)",
		time.Since(start).Round(time.Millisecond), r.MSToConnect(), r.Attempts, r.FirstFailed)
}
