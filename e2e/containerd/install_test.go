package containerd

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// TestInstallWithoutRestart: real containerd runs K3s's chain without
// netready; `netready install` (owned mode) puts 00-netready.conflist into
// its conf dir and containerd, never restarted, loads it and gates the next
// pod; `netready uninstall` switches it back. The fake K3s data-dir links
// its conf dir and bin dir to containerd's, so install works on exactly the
// files containerd reads.
func TestInstallWithoutRestart(t *testing.T) {
	bed, r, nrDir := operatorBed(t) // K3s's plugins only: install brings netready
	netready := filepath.Join(nrDir, testbed.Netready)
	ctx := t.Context()

	root := filepath.Join(bed.Dir, "node")
	for link, target := range map[string]string{
		"k3s/agent/etc/cni/net.d": r.ConfDir,
		"k3s/data/cni":            bed.BinDir,
	} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(link)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	logFile := filepath.Join(bed.Dir, "netready-install.log")
	start := time.Now()
	out, err := exec.CommandContext(ctx, netready, "install", "--root", root, "--data-dir", "/k3s",
		"--probe", testbed.ProbeDB, "--timeout", "20s", "--log-file", logFile).CombinedOutput()
	installed := time.Now()
	if err != nil {
		t.Fatalf("netready install: %v\n%s", err, out)
	}
	t.Logf("netready install took %v:\n%s", installed.Sub(start).Round(time.Millisecond), out)
	picked := waitCNIConfig(ctx, t, r, true)
	t.Logf("containerd loaded the owned conflist %v after install returned", picked.Sub(installed).Round(time.Millisecond))

	fault := runGated(ctx, t, bed, r)
	if b, _ := os.ReadFile(logFile); !bytes.Contains(b, []byte(`"verb":"ADD"`)) {
		t.Errorf("netready's log %s has no ADD line: %.300s", logFile, b)
	}

	if err := fault.Block(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if out, err := exec.CommandContext(ctx, netready, "uninstall", "--root", root, "--data-dir", "/k3s").CombinedOutput(); err != nil {
		t.Fatalf("netready uninstall: %v\n%s", err, out)
	}
	uninstalled := time.Now()
	back := waitCNIConfig(ctx, t, r, false)
	t.Logf("netready uninstall took %v; containerd back on K3s's chain %v later", uninstalled.Sub(start).Round(time.Millisecond), back.Sub(uninstalled).Round(time.Millisecond))
	if _, err := os.Stat(filepath.Join(bed.BinDir, "netready")); err == nil {
		t.Error("uninstall left the binary")
	}
	start = time.Now()
	plain, err := r.RunPod(ctx, PodConfig{Name: "plain"})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("after uninstall RunPodSandbox took %v with the path blocked: netready still gates", d)
	}
	if err := r.RemovePod(ctx, plain); err != nil {
		t.Error(err)
	}
	if _, err := fault.Unblock(); err != nil {
		t.Error(err)
	}
}

// waitCNIConfig polls containerd's CRI status until its loaded CNI config
// does (or does not) name netready, and returns when it did.
func waitCNIConfig(ctx context.Context, t *testing.T, r *Runtime, withNetready bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		out, err := r.Crictl(ctx, "info")
		if err == nil && bytes.Contains(out, []byte(`netready`)) == withNetready && bytes.Contains(out, []byte(`cbr0`)) {
			return time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("containerd's CNI config did not change within 10s (netready wanted: %v)", withNetready)
	return time.Time{}
}
