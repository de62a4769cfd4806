package k3s

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestInstall: netready installed in K3s's CNI conf dir is in the live chain (crictl info) and
// runs for a new pod (its ADD line in netready's log); after a K3s restart (which rewrites
// 10-flannel.conflist) it still is; after uninstall the default chain is back and a new pod runs.
func TestInstall(t *testing.T) {
	n := need(t)
	ctx := t.Context()
	if err := n.CreateNamespace(ctx, "e2e-install"); err != nil {
		t.Fatal(err)
	}
	runPod := func(name string) {
		t.Helper()
		p := PodSpec{Namespace: "e2e-install", Name: name}
		if err := n.Apply(ctx, p); err != nil {
			t.Fatal(err)
		}
		if _, err := n.WaitPhase(ctx, p.Namespace, p.Name, 2*time.Minute, "Succeeded"); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.InstallNetready(netreadyConf(n, "30s", nil)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	chain := waitChain(t, n, true)
	t.Logf("installed: containerd's chain %v (%v after the rename)", chain, time.Since(start).Round(time.Millisecond))
	runPod("installed")
	lines := addLines(t, n, "e2e-install/installed")
	if len(lines) == 0 || lines[0].Outcome != "ready" {
		t.Fatalf("no ready ADD line of netready for the pod: %+v", lines)
	}
	t.Logf("netready's ADD for the pod: %s in %.1f ms", lines[0].Outcome, lines[0].TotalMS)
	figures.SetIn("install", "chained", true)

	before, err := os.Stat(filepath.Join(n.CNIConfDir(), OwnedConflist))
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := n.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("K3s restarted in %v", time.Since(start).Round(100*time.Millisecond))
	after, err := os.Stat(filepath.Join(n.CNIConfDir(), OwnedConflist))
	if err != nil {
		t.Fatalf("K3s's restart removed the owned conflist: %v", err)
	}
	if !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("K3s's restart rewrote %s (mtime %v, was %v)", OwnedConflist, after.ModTime(), before.ModTime())
	}
	waitChain(t, n, true)
	runPod("restarted")
	if lines := addLines(t, n, "e2e-install/restarted"); len(lines) == 0 || lines[0].Outcome != "ready" {
		t.Fatalf("after K3s's restart: no ready ADD line of netready for the pod: %+v", lines)
	}
	figures.SetIn("install", "restart_chained", true)

	if err := n.UninstallNetready(); err != nil {
		t.Fatal(err)
	}
	chain = waitChain(t, n, false)
	runPod("uninstalled")
	if lines := addLines(t, n, "e2e-install/uninstalled"); len(lines) != 0 {
		t.Fatalf("netready ran after uninstall: %+v", lines)
	}
	t.Logf("uninstalled: containerd's chain %v, a new pod ran without netready", chain)
	figures.SetIn("install", "uninstalled", fmt.Sprint(chain) == "[flannel portmap bandwidth]")
}
