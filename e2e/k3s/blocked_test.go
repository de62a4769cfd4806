package k3s

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// TestBlocked: the path to the db is blocked (nft drop in the router) for longer than netready's
// timeout. The pod's events carry netready's message, the kubelet retries the sandbox (a second
// failed ADD), and once the path opens the pod runs. Measures the kubelet's retry gap and how
// long after the opening the app starts (the cost of a failed ADD).
func TestBlocked(t *testing.T) {
	n := need(t)
	ctx := t.Context()
	const ns = "e2e-blocked"
	if err := n.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	install(t, n, "10s", testbed.ProbeDB)
	fault, err := n.Bed.BlockRouter(context.Background()) // not t.Context(): canceled before Cleanup lifts the fault
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fault.Unblock() })
	p := PodSpec{Namespace: ns, Name: "blocked"}
	if err := n.Apply(ctx, p); err != nil {
		t.Fatal(err)
	}
	// Two failed ADDs: netready's message in the event, and the kubelet's retry.
	var failed []logLine
	deadline := time.Now().Add(2 * time.Minute)
	for len(failed) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("after 2 min, %d failed ADDs of netready for the pod (want 2); events: %s", len(failed), n.describe(ctx, ns, p.Name))
		}
		time.Sleep(500 * time.Millisecond)
		failed = failed[:0]
		for _, l := range addLines(t, n, ns+"/"+p.Name) {
			if l.Outcome != "ready" {
				failed = append(failed, l)
			}
		}
	}
	evs, err := n.API.PodEvents(ctx, ns, p.Name)
	if err != nil {
		t.Fatal(err)
	}
	hasMsg := slices.ContainsFunc(evs, func(e Event) bool {
		return e.Reason == "FailedCreatePodSandBox" && strings.Contains(e.Message, `plugin type="netready" failed (add): pod network not ready after`) &&
			strings.Contains(e.Message, "tcp://198.51.100.10:5432")
	})
	figures.SetIn("blocked", "event_has_message", hasMsg)
	if !hasMsg {
		t.Fatalf("no FailedCreatePodSandBox event with netready's message; events: %s", n.describe(ctx, ns, p.Name))
	}
	gap := failed[1].Time.Add(-time.Duration(failed[1].TotalMS * 1e6)).Sub(failed[0].Time)
	t.Logf("netready's message is in the pod's event; the kubelet retried the sandbox %.1f s after the failed ADD", gap.Seconds())
	figures.SetIn("blocked", "retry_gap_s", round1(gap.Seconds()))

	// Open the path at a random moment of a waiting ADD, or of a retry gap: the pod runs.
	time.Sleep(time.Duration(rand.Int64N(int64(5 * time.Second))))
	openedAt, err := fault.Unblock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.WaitPhase(ctx, ns, p.Name, 2*time.Minute, "Succeeded"); err != nil {
		t.Fatal(err)
	}
	app, err := n.AppReport(ctx, ns, p.Name, "app")
	if err != nil {
		t.Fatal(err)
	}
	after := time.Duration(app.StartedNS - openedAt.UnixNano())
	t.Logf("path opened after %d failed ADDs; the app started %v after the opening", len(failed), after.Round(time.Millisecond))
	figures.SetIn("blocked", "open_to_app_start_ms", round1(float64(after)/1e6))
	if app.FirstFailed {
		t.Errorf("the app's first connect failed after netready passed the pod: %s", app.FirstError)
	}
}

// TestOutageShorterThanTimeout: the path opens 1-6 s after the pod's veth appears, within
// netready's 30 s timeout: netready's ADD returns right after the opening and the app, started
// then, connects on its first attempt. Measures path opened -> ADD returned and -> app started.
func TestOutageShorterThanTimeout(t *testing.T) {
	n := need(t)
	ctx := t.Context()
	const ns = "e2e-outage"
	count := 10
	if testing.Short() {
		count = 3
	}
	if err := n.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	install(t, n, "30s", testbed.ProbeDB)
	fault, watch := blockAndWatch(t, n)
	var toADD, toApp []float64
	for i := range count {
		p := PodSpec{Namespace: ns, Name: fmt.Sprintf("outage-%02d", i)}
		_, vethAt := applyBlocked(ctx, t, n, fault, watch, p)
		o := <-fault.OpenAt(vethAt.Add(time.Second + time.Duration(rand.Int64N(int64(5*time.Second)))))
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		if _, err := n.WaitPhase(ctx, ns, p.Name, 2*time.Minute, "Succeeded"); err != nil {
			t.Fatal(err)
		}
		app, err := n.AppReport(ctx, ns, p.Name, "app")
		if err != nil {
			t.Fatal(err)
		}
		lines := addLines(t, n, ns+"/"+p.Name)
		if len(lines) != 1 || lines[0].Outcome != "ready" {
			t.Fatalf("pod %s: want one ready ADD of netready, got %+v", p.Name, lines)
		}
		if app.FirstFailed {
			t.Errorf("pod %s: the app's first connect failed: %s", p.Name, app.FirstError)
		}
		toADD = append(toADD, round1(float64(lines[0].Time.Sub(o.At))/1e6))
		toApp = append(toApp, round1(float64(app.StartedNS-o.At.UnixNano())/1e6))
		n.DeletePod(ctx, ns, p.Name, true)
	}
	t.Logf("%d pods: path opened -> netready's ADD returned p50 %.1f ms p99 %.1f ms; -> app started p50 %.1f ms p99 %.1f ms",
		count, testbed.Percentile(toADD, 50), testbed.Percentile(toADD, 99), testbed.Percentile(toApp, 50), testbed.Percentile(toApp, 99))
	figures.Set("open_to_running_ms", map[string]any{
		"p50": testbed.Percentile(toApp, 50), "p99": testbed.Percentile(toApp, 99),
		"add_return_p50": testbed.Percentile(toADD, 50), "add_return_p99": testbed.Percentile(toADD, 99),
		"pods": count, "app_start_ms": toApp, "add_return_ms": toADD,
	})
	// netready's own part: the ADD returns within a second of the opening (generous: typically
	// tens of ms). What follows is the kubelet's and containerd's container start.
	if p99 := testbed.Percentile(toADD, 99); p99 > 1000 {
		t.Errorf("netready's ADD returned %.0f ms (p99) after the path opened, want <= 1000 ms", p99)
	}
	if p99 := testbed.Percentile(toApp, 99); p99 > 15000 {
		t.Errorf("the app started %.0f ms (p99) after the path opened, want <= 15 s", p99)
	}
}

// TestDeleteWhileWaiting: a pod is deleted while netready's ADD waits for a path that stays
// blocked (timeout 30 s). On K3s v1.35 neither the kubelet nor containerd cancels a RunPodSandbox
// in progress (no SIGTERM, no netns removal reaches netready): without podWatch the ADD ran to its
// timeout and the pod lingered that long. netready installed by `netready install` with its
// defaults watches its own pod with the kubelet's credentials: the ADD ends once the API server
// marks the pod deleted, and the pod is gone <= 5 s after the delete (issue 10). Several pods in
// turn; measures delete -> ADD ended (its log line) and delete -> pod gone from the API.
func TestDeleteWhileWaiting(t *testing.T) {
	n := need(t)
	ctx := t.Context()
	const ns = "e2e-delete"
	if err := n.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	const timeout = 30 * time.Second
	install(t, n, timeout.String(), testbed.ProbeDB)
	checkDefaultPodWatch(t, n.CNIConfDir(), n.DataDir, "https://127.0.0.1:6443")
	fault, err := n.Bed.BlockRouter(context.Background()) // not t.Context(): canceled before Cleanup lifts the fault
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fault.Unblock() })

	runs := 3
	var podGone, addEnded []float64
	for i := range runs {
		p := PodSpec{Namespace: ns, Name: podName("deleted", itoa(i))}
		gone, ended := deleteWhileWaiting(t, n, p, func() []int { return netreadyProcs(n) }, netreadyLog(n), timeout)
		ms := func(d time.Duration) float64 { return float64(d.Milliseconds()) / 1000 }
		podGone, addEnded = append(podGone, ms(gone)), append(addEnded, ms(ended))
	}
	slices.Sort(podGone)
	slices.Sort(addEnded)
	figures.Set("delete_while_waiting_s", round1(podGone[len(podGone)-1]))
	figures.Set("delete_while_waiting_add_ended_s", addEnded[len(addEnded)-1])
	figures.Set("delete_while_waiting_runs", map[string]any{"pod_gone_s": podGone, "add_ended_s": addEnded})
}

// deleteWhileWaiting creates pod p while the path is blocked, waits until a netready ADD runs
// (procs lists them) and 3 s into it (past podWatch's 1 s), deletes the pod and waits until it
// is gone from the API and its ADD's line is in logFile. It fails the test unless the line is
// pod-deleted, code 100, naming the pod, and the pod was gone <= 5 s after the delete; it
// returns delete -> gone and delete -> the ADD's line.
func deleteWhileWaiting(t *testing.T, n *Node, p PodSpec, procs func() []int, logFile string, timeout time.Duration) (gone, ended time.Duration) {
	t.Helper()
	ctx := t.Context()
	ns := p.Namespace
	if err := n.Apply(ctx, p); err != nil {
		t.Fatal(err)
	}
	// The ADD has started once the pod's veth exists and netready runs; wait well into it
	// (past podWatch's 1 s, so the watch is open, as it is for any pod that really waits).
	for deadline := time.Now().Add(time.Minute); len(procs()) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no netready ADD running within a minute: %s", n.describe(ctx, ns, p.Name))
		}
	}
	time.Sleep(3 * time.Second)
	deleted := time.Now()
	if err := n.DeletePod(ctx, ns, p.Name, false); err != nil {
		t.Fatal(err)
	}
	var line *logLine
	for deadline := deleted.Add(timeout + 30*time.Second); gone == 0 || line == nil; time.Sleep(50 * time.Millisecond) {
		if gone == 0 {
			if _, err := n.API.GetPod(ctx, ns, p.Name); IsNotFound(err) {
				gone = time.Since(deleted)
			}
		}
		if line == nil {
			for _, l := range addLinesIn(t, logFile, ns+"/"+p.Name) {
				if l.Time.After(deleted) {
					line = &l
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v after the delete the pod is gone: %v, the ADD's line: %+v", p.Name, timeout+30*time.Second, gone > 0, line)
		}
	}
	ended = line.Time.Sub(deleted)
	t.Logf("%s deleted while its ADD waited: the ADD ended %v after the delete (%s, code %d: %s); the pod was gone from the API %v after the delete",
		p.Name, ended.Round(time.Millisecond), line.Outcome, line.Code, line.Error, gone.Round(time.Millisecond))
	if line.Outcome != "pod-deleted" || line.Code != 100 || !strings.Contains(line.Error, "pod "+ns+"/"+p.Name+" is being deleted: deletionTimestamp") {
		t.Errorf("%s: the ADD's line says %s, code %d: %q; want pod-deleted, code 100, naming the pod and its deletionTimestamp", p.Name, line.Outcome, line.Code, line.Error)
	}
	if gone > 5*time.Second {
		t.Errorf("%s was gone %v after the delete, want <= 5 s", p.Name, gone)
	}
	return gone, ended
}

// checkDefaultPodWatch: `netready install` with its defaults wrote podWatch with the kubelet's
// own server and credentials from the data dir (K3s's kubelet.kubeconfig): server is
// https://127.0.0.1:6443 on a server node, the agent's load balancer :6444 on an agent.
func checkDefaultPodWatch(t *testing.T, confDir, dataDir, server string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(confDir, OwnedConflist))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Plugins []struct {
			Type     string            `json:"type"`
			PodWatch map[string]string `json:"podWatch"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(raw, &list); err != nil || len(list.Plugins) == 0 {
		t.Fatalf("%s: %v", OwnedConflist, err)
	}
	agent := filepath.Join(dataDir, "agent")
	got := list.Plugins[len(list.Plugins)-1].PodWatch
	want := map[string]string{"server": server, "caFile": filepath.Join(agent, "server-ca.crt"),
		"certFile": filepath.Join(agent, "client-kubelet.crt"), "keyFile": filepath.Join(agent, "client-kubelet.key")}
	if !maps.Equal(got, want) {
		t.Errorf("the installed netready's podWatch is %v, want %v", got, want)
	}
}
