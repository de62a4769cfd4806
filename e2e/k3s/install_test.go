package k3s

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// TestInstall: the way a user installs netready on K3s. `netready install --data-dir ...
// --probe ... --log-file ...` exits 0 and says the first conflist chains netready; containerd's
// live chain (crictl info) holds netready within seconds, without a restart; the next pod is
// gated (its ready ADD in the log file install configured); a failed ADD leaves a readable line
// there; after a K3s restart (which rewrites 10-flannel.conflist) the owned conflist is untouched
// and still chained; `netready uninstall` brings the default chain back, a new pod runs without
// netready, and the data dir holds what it held before install.
func TestInstall(t *testing.T) {
	n := need(t)
	ctx := t.Context()
	const ns = "e2e-install"
	if err := n.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	runPod := func(name string) {
		t.Helper()
		p := PodSpec{Namespace: ns, Name: name}
		if err := n.Apply(ctx, p); err != nil {
			t.Fatal(err)
		}
		if _, err := n.WaitPhase(ctx, p.Namespace, p.Name, 2*time.Minute, "Succeeded"); err != nil {
			t.Fatal(err)
		}
	}
	before := cniFootprint(t, n)

	start := time.Now()
	r, err := n.InstallNetready(ctx, netreadyLog(n), installArgs("30s", testbed.ProbeDB)...)
	if err != nil {
		t.Fatal(err)
	}
	installed := false
	t.Cleanup(func() {
		if installed {
			n.UninstallNetready(context.Background())
		}
	})
	installed = true
	took := time.Since(start)
	if want := "chains netready last"; !strings.Contains(r.Stdout, want) {
		t.Fatalf("netready install exited 0 but does not say %q: %s", want, r)
	}
	t.Logf("netready install (%v):\n%s", took.Round(time.Millisecond), strings.TrimSpace(r.Stdout))
	start = time.Now()
	chain := waitChain(t, n, true)
	loaded := time.Since(start)
	t.Logf("containerd's chain %v %v after install returned", chain, loaded.Round(time.Millisecond))
	if loaded > 5*time.Second {
		t.Errorf("containerd loaded the owned conflist %v after install, want within a few seconds", loaded)
	}
	runPod("installed")
	lines := addLines(t, n, ns+"/installed")
	if len(lines) == 0 || lines[0].Outcome != "ready" {
		t.Fatalf("no ready ADD line of netready for the pod in %s: %+v", netreadyLog(n), lines)
	}
	t.Logf("netready's ADD for the pod: %s in %.1f ms", lines[0].Outcome, lines[0].TotalMS)
	figures.SetIn("install", "chained", true)

	failedADDLeavesLine(t, n, ns)

	ownedBefore, err := os.Stat(filepath.Join(n.CNIConfDir(), OwnedConflist))
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := n.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("K3s restarted in %v", time.Since(start).Round(100*time.Millisecond))
	ownedAfter, err := os.Stat(filepath.Join(n.CNIConfDir(), OwnedConflist))
	if err != nil {
		t.Fatalf("K3s's restart removed the owned conflist: %v", err)
	}
	if !ownedAfter.ModTime().Equal(ownedBefore.ModTime()) {
		t.Errorf("K3s's restart rewrote %s (mtime %v, was %v)", OwnedConflist, ownedAfter.ModTime(), ownedBefore.ModTime())
	}
	waitChain(t, n, true)
	runPod("restarted")
	if lines := addLines(t, n, ns+"/restarted"); len(lines) == 0 || lines[0].Outcome != "ready" {
		t.Fatalf("after K3s's restart: no ready ADD line of netready for the pod: %+v", lines)
	}
	figures.SetIn("install", "restart_chained", true)

	r, err = n.UninstallNetready(ctx)
	if err != nil {
		t.Fatal(err)
	}
	installed = false
	if want := "netready is uninstalled"; !strings.Contains(r.Stdout, want) {
		t.Fatalf("netready uninstall exited 0 but does not say %q: %s", want, r)
	}
	t.Logf("netready uninstall:\n%s", strings.TrimSpace(r.Stdout))
	chain = waitChain(t, n, false)
	runPod("uninstalled")
	if lines := addLines(t, n, ns+"/uninstalled"); len(lines) != 0 {
		t.Fatalf("netready ran after uninstall: %+v", lines)
	}
	after := cniFootprint(t, n)
	if !slices.Equal(before, after) {
		t.Errorf("after uninstall the data dir's CNI files differ from before install:\nbefore %q\nafter  %q", before, after)
	}
	t.Logf("uninstalled: containerd's chain %v, a new pod ran without netready; CNI files as before install: %q", chain, after)
	figures.SetIn("install", "uninstalled", fmt.Sprint(chain) == "[flannel portmap bandwidth]" && slices.Equal(before, after))
}

// failedADDLeavesLine blocks the path to the db, creates a pod that asks (annotation) for a 3 s
// timeout, and checks that its failed ADD left a readable line in the log file install
// configured: issue 11's "a failed ADD leaves a readable line in the log".
func failedADDLeavesLine(t *testing.T, n *Node, ns string) {
	t.Helper()
	ctx := t.Context()
	fault, err := n.Bed.BlockRouter(context.Background()) // not t.Context(): canceled before Cleanup lifts the fault
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fault.Unblock() })
	p := PodSpec{Namespace: ns, Name: "failed", Annotations: map[string]string{"netready.dev/timeout": "3s"}}
	if err := n.Apply(ctx, p); err != nil {
		t.Fatal(err)
	}
	var failed *logLine
	for deadline := time.Now().Add(time.Minute); failed == nil; {
		for _, l := range addLines(t, n, ns+"/"+p.Name) {
			if l.Outcome != "ready" {
				failed = &l
				break
			}
		}
		if failed == nil && time.Now().After(deadline) {
			t.Fatalf("no failed ADD line in %s within a minute of the pod's creation: %s", netreadyLog(n), n.describe(ctx, ns, p.Name))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(failed.Error, "not ready after 3.") || !strings.Contains(failed.Error, testbed.ProbeDB) || failed.Code != 11 {
		t.Errorf("the failed ADD's line does not say what was not ready after the 3 s timeout (CNI code 11): %+v", *failed)
	}
	t.Logf("a failed ADD's line in %s: outcome %s, code %d, %q", netreadyLog(n), failed.Outcome, failed.Code, failed.Error)
	if _, err := fault.Unblock(); err != nil {
		t.Fatal(err)
	}
	if err := n.DeletePod(ctx, ns, p.Name, true); err != nil {
		t.Fatal(err)
	}
}

// cniFootprint lists what install may touch in the data dir: the CNI conf dir's and bin dir's
// entries (name, size, mode) and every path under the data dir named netready* or
// 00-netready.conflist (the binary, the conflist, the install record), skipping containerd's store.
func cniFootprint(t *testing.T, n *Node) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{n.CNIConfDir(), n.CNIBinDir()} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			fi, err := e.Info()
			if err != nil {
				continue
			}
			out = append(out, fmt.Sprintf("%s %d %v", filepath.Join(dir, e.Name()), fi.Size(), fi.Mode()))
		}
	}
	skip := filepath.Join(n.DataDir, "agent", "containerd")
	filepath.WalkDir(n.DataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && p == skip {
			return filepath.SkipDir
		}
		if strings.HasPrefix(d.Name(), "netready") || d.Name() == OwnedConflist {
			out = append(out, p)
		}
		return nil
	})
	slices.Sort(out)
	return out
}
