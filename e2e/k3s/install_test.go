package k3s

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
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
		runToSuccess(t, n, PodSpec{Namespace: ns, Name: name})
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
	if !notReadyAfter3s.MatchString(failed.Error) || !strings.Contains(failed.Error, testbed.ProbeDB) || failed.Code != 11 {
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

// TestDaemonSet: the fleet way on real K3s. netready's image, built by packaging/image (what
// `make image` runs) and imported with K3s's ctr, runs as deploy/netready.yaml's DaemonSet with
// the tier's paths: the agent pod runs (hostNetwork), the next pod is gated without a K3s
// restart, a K3s restart keeps netready chained, /metrics on the node IP shows the ADDs just
// made, and deleting the DaemonSet restores K3s's chain for new pods. It runs after TestInstall
// (which uninstalls), on a conf dir without the owned conflist: the two write the same file.
func TestDaemonSet(t *testing.T) {
	n := need(t)
	ctx := t.Context()
	root, err := testbed.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	const ns = "e2e-daemonset"
	if err := n.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	owned := filepath.Join(n.CNIConfDir(), OwnedConflist)
	if _, err := os.Stat(owned); err == nil {
		t.Fatalf("%s is there before the DaemonSet: an earlier test left it", owned)
	}
	bin := filepath.Join(n.CNIBinDir(), "netready")
	_, err = os.Stat(bin)
	binBefore := err == nil

	start := time.Now()
	version := fmt.Sprintf("e2e-%d", os.Getpid())
	tar, err := BuildImage(ctx, root, filepath.Join(n.Tools, "netready"), version, filepath.Join(n.Dir, "image"))
	if err != nil {
		t.Fatal(err)
	}
	built := time.Since(start)
	start = time.Now()
	if _, err := n.ImportImage(ctx, tar); err != nil {
		t.Fatal(err)
	}
	t.Logf("image %s:%s built in %v (packaging/image), imported with K3s's ctr in %v", FleetImageRepo, version, built.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))

	raw, err := os.ReadFile(filepath.Join(root, "deploy", "netready.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	logDir := filepath.Join(n.Dir, "fleet-log")
	logFile := filepath.Join(logDir, "netready.log")
	manifest, err := RenderManifest(string(raw), FleetOptions{ConfDir: n.CNIConfDir(), BinDir: n.CNIBinDir(), DataDir: n.DataDir,
		Image: FleetImageRepo + ":" + version, Probes: []string{testbed.ProbeDB}, LogDir: logDir})
	if err != nil {
		t.Fatal(err)
	}
	applied := time.Now()
	if _, err := n.KubectlInput(ctx, manifest, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			n.KubectlInput(context.Background(), manifest, "delete", "--wait=true", "--timeout=2m", "-f", "-")
		}
		os.Remove(owned) // only if the agent did not: later tests need a clean conf dir
		if !binBefore {
			os.Remove(bin) // only if the agent did not
		}
	})
	if out, err := n.Kubectl(ctx, "-n", "netready", "rollout", "status", "daemonset/netready", "--timeout=3m"); err != nil {
		pods, _ := n.Kubectl(context.Background(), "-n", "netready", "describe", "pods")
		t.Fatalf("the DaemonSet did not roll out: %v %s\n%s", err, out, pods)
	}
	st, err := n.Kubectl(ctx, "-n", "netready", "get", "pods", "-l", "app.kubernetes.io/name=netready",
		"-o", "jsonpath={range .items[*]}{.spec.hostNetwork} {.status.phase}{\"\\n\"}{end}")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(st) != "true Running" {
		t.Fatalf("the agent pod: hostNetwork and phase %q, want one pod \"true Running\"", st)
	}
	chain := waitChain(t, n, true)
	t.Logf("agent pod running (hostNetwork); containerd's chain %v %v after kubectl apply, K3s not restarted", chain, time.Since(applied).Round(100*time.Millisecond))
	checkDefaultPodWatch(t, n.CNIConfDir(), n.DataDir, "https://127.0.0.1:6443") // the agent filled it from the node's kubelet.kubeconfig

	runPod := func(name string) {
		t.Helper()
		runToSuccess(t, n, PodSpec{Namespace: ns, Name: name})
	}
	gated := func(name string) {
		t.Helper()
		lines := addLinesIn(t, logFile, ns+"/"+name)
		if len(lines) == 0 || lines[0].Outcome != "ready" {
			t.Fatalf("no ready ADD line of netready for %s in %s: %+v", name, logFile, lines)
		}
		t.Logf("pod %s gated: %s in %.1f ms", name, lines[0].Outcome, lines[0].TotalMS)
	}
	runPod("gated")
	gated("gated")
	fleetMetrics(t, n, logFile)

	start = time.Now()
	if err := n.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("K3s restarted in %v", time.Since(start).Round(100*time.Millisecond))
	waitChain(t, n, true)
	runPod("restarted")
	gated("restarted")
	fleetMetrics(t, n, logFile)
	figures.SetIn("daemonset", "restart_chained", true)

	// A pod gated by the agent's chain that outlives the DaemonSet: its DEL comes after the
	// agent removed the binary.
	held := PodSpec{Namespace: ns, Name: "held", Sleep: true}
	if err := n.Apply(ctx, held); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WaitPhase(ctx, ns, held.Name, 2*time.Minute, "Running"); err != nil {
		t.Fatal(err)
	}
	gated(held.Name)

	start = time.Now()
	if _, err := n.KubectlInput(ctx, manifest, "delete", "--wait=true", "--timeout=2m", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	deleted = true
	chain = waitChain(t, n, false)
	t.Logf("DaemonSet deleted: containerd's chain %v %v after kubectl delete began", chain, time.Since(start).Round(100*time.Millisecond))
	if fmt.Sprint(chain) != "[flannel portmap bandwidth]" {
		t.Errorf("after the DaemonSet's deletion containerd's chain is %v, want K3s's [flannel portmap bandwidth]", chain)
	}
	if _, err := os.Stat(owned); err == nil {
		t.Errorf("the agent left %s after its DaemonSet was deleted", owned)
	}
	runPod("deleted")
	if lines := addLinesIn(t, logFile, ns+"/deleted"); len(lines) != 0 {
		t.Fatalf("netready ran after the DaemonSet was deleted: %+v", lines)
	}
	if _, err := os.Stat(bin); err == nil && !binBefore {
		t.Errorf("the agent left %s after its DaemonSet was deleted: the node is not as it was", bin)
	}
	// The held pod's sandbox was set up through netready; its teardown must not need it.
	start = time.Now()
	if err := n.DeletePod(ctx, ns, held.Name, false); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := n.API.GetPod(ctx, ns, held.Name); IsNotFound(err) {
			break
		}
		if time.Since(start) > 60*time.Second {
			ev, _ := n.Kubectl(context.Background(), "-n", ns, "get", "events", "--field-selector", "involvedObject.name="+held.Name)
			t.Fatalf("a pod gated before the DaemonSet's deletion is not gone 60 s after its delete (its DEL without netready's binary?):\n%s", ev)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("a new pod ran on K3s's chain; the binary is gone; a pod gated before the deletion was deleted in %v", time.Since(start).Round(100*time.Millisecond))
	figures.SetIn("daemonset", "deleted_default_chain", true)
}

// fleetMetrics waits (10 s) until the agent's /metrics, on the node IP from the node netns,
// counts as many ready ADDs as the log holds: the agent reads the whole log when it starts.
func fleetMetrics(t *testing.T, n *Node, logFile string) {
	t.Helper()
	want := 0
	for _, l := range addLinesIn(t, logFile, "") {
		if l.Outcome == "ready" {
			want++
		}
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: n.Bed.Node.Dial}}
	url := "http://" + net.JoinHostPort(testbed.NodeUplink.String(), "9725") + "/metrics"
	re := regexp.MustCompile(`(?m)^netready_adds_total\{outcome="ready"\} (\d+)$`)
	var body string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		resp, err := client.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if m := re.FindStringSubmatch(body); m != nil && m[1] == strconv.Itoa(want) {
				t.Logf("%s: %s", url, m[0])
				return
			}
		} else {
			body = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not count the %d ready ADDs of %s within 10 s:\n%.3000s", url, want, logFile, body)
		}
	}
}

// runToSuccess applies p and waits (2 min) until it has Succeeded.
func runToSuccess(t *testing.T, n *Node, p PodSpec) {
	t.Helper()
	if err := n.Apply(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WaitPhase(t.Context(), p.Namespace, p.Name, 2*time.Minute, "Succeeded"); err != nil {
		t.Fatal(err)
	}
}
