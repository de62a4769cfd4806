package k3s

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// budgetEnv turns on TestSandboxBudget (about 5 minutes).
const budgetEnv = "E2E_K3S_BUDGET"

// TestSandboxBudget measures how long K3s's kubelet and containerd let a CNI ADD run before
// giving up on RunPodSandbox, with a plugin appended to K3s's chain that never answers (a shell
// script that sleeps): when the ADD process is killed, and what the pod's events say. It is
// independent of netready's own timeout cap (110 s), which is what it informs. Opt-in:
// E2E_K3S_BUDGET=1.
func TestSandboxBudget(t *testing.T) {
	n := need(t)
	if os.Getenv(budgetEnv) == "" {
		t.Skipf("set %s=1 to measure the runtime's budget for a CNI ADD (about 5 minutes)", budgetEnv)
	}
	ctx := t.Context()
	const ns = "e2e-budget"
	if err := n.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	stamp := filepath.Join(n.Dir, "blocker.started")
	script := "#!/bin/sh\n[ \"$CNI_COMMAND\" = ADD ] || { cat >/dev/null; echo '{\"cniVersion\":\"1.0.0\"}'; exit 0; }\n" +
		"date +%s.%N >> " + stamp + "\nexec sleep 100000\n"
	bin := filepath.Join(n.CNIBinDir(), "nr-blocker")
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	live, err := os.ReadFile(filepath.Join(n.CNIConfDir(), "10-flannel.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	var list map[string]any
	json.Unmarshal(live, &list)
	list["plugins"] = append(list["plugins"].([]any), map[string]any{"type": "nr-blocker"})
	data, _ := json.Marshal(list)
	conf := filepath.Join(n.CNIConfDir(), OwnedConflist)
	if err := os.WriteFile(conf+".tmp", data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(conf+".tmp", conf); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(conf); os.Remove(bin) })
	deadline := time.Now().Add(30 * time.Second)
	for {
		chain, _ := n.LiveChain(ctx)
		if slices.Contains(chain, "nr-blocker") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not load the blocker chain: %v", chain)
		}
		time.Sleep(200 * time.Millisecond)
	}
	p := PodSpec{Namespace: ns, Name: "budget"}
	if err := n.Apply(ctx, p); err != nil {
		t.Fatal(err)
	}
	// The sleep process: its parent is the shell's exec, so it is the plugin process itself.
	var pid int
	var started time.Time
	for deadline := time.Now().Add(time.Minute); pid == 0; {
		for _, q := range procsByExe("/usr/bin/sleep", "/bin/sleep") {
			if c, _ := os.ReadFile(filepath.Join("/proc", itoa(q), "cmdline")); strings.Contains(string(c), "100000") {
				pid, started = q, time.Now()
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the blocker plugin never ran")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for alive(pid) && time.Since(started) < 8*time.Minute {
		time.Sleep(100 * time.Millisecond)
	}
	lasted := time.Since(started)
	time.Sleep(2 * time.Second)
	ev := n.describe(ctx, ns, p.Name)
	t.Logf("the ADD was killed %.1f s after it started; events: %s", lasted.Seconds(), ev)
	figures.Set("sandbox_budget_s", round1(lasted.Seconds()))
	if lasted < 110*time.Second {
		t.Errorf("the runtime killed the ADD after %v: less than netready's 110 s cap", lasted)
	}
	n.DeletePod(ctx, ns, p.Name, true)
}
