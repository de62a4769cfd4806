package containerd

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/internal/logrec"
)

// TestPodAnnotation: containerd passes the crictl pod config's annotations to netready (the
// capability io.kubernetes.cri.pod-annotations of the shipped conflist), and
// netready.dev/probes gates that pod, and only that pod: the shipped conflist has no probes of
// its own. With the path to the db blocked, a pod without the annotation is set up at once; a
// pod with it is set up only once the path opens, 1 s after its veth appears, its app's first
// connect succeeds, and netready's log shows the probe with origin "annotation".
func TestPodAnnotation(t *testing.T) {
	SkipUnlessRoot(t)
	const block = time.Second
	bed := testbed.New(t, testbed.Options{Plugins: testbed.WithNetready})
	logFile := filepath.Join(bed.Dir, "netready-annotation.log")
	r := newRuntime(t, bed, shippedConflist(t, map[string]any{"logFile": logFile}))
	ctx := t.Context()
	fault, err := bed.BlockRouter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	watcher, err := WatchVeths(bed)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()

	// No annotation: nothing to wait for, so the blocked path does not hold the pod up.
	start := time.Now()
	plain, err := r.RunPod(ctx, PodConfig{Name: "plain"})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("pod without the annotation: RunPodSandbox took %v with the path blocked; nothing should gate it", d)
	}
	if err := r.RemovePod(ctx, plain); err != nil {
		t.Error(err)
	}

	watcher.Drain()
	opened := make(chan testbed.Opened, 1)
	go func() {
		defer close(opened)
		veth, err := watcher.Next(ctx)
		if err != nil {
			opened <- testbed.Opened{Err: err}
			return
		}
		if o, ok := <-fault.OpenAt(veth.At.Add(block)); ok {
			opened <- o
		}
	}()
	start = time.Now()
	gated, err := r.RunPod(ctx, PodConfig{Name: "gated", Annotations: map[string]string{"netready.dev/probes": testbed.ProbeDB}})
	returned := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	o, ok := <-opened
	if !ok || o.Err != nil {
		t.Fatalf("opening the path: %v", o.Err)
	}
	t.Logf("pod with netready.dev/probes: RunPodSandbox took %v; it returned %v after the path opened",
		returned.Sub(start).Round(time.Millisecond), returned.Sub(o.At).Round(time.Microsecond))
	if returned.Before(o.At) {
		t.Errorf("RunPodSandbox returned %v before the path opened: the annotation's probe did not gate the pod", o.At.Sub(returned))
	}
	if returned.Sub(start) < block {
		t.Errorf("RunPodSandbox took %v, less than the %v block", returned.Sub(start), block)
	}
	id, err := r.RunContainer(ctx, gated, ContainerConfig{Name: "app", Args: []string{"app", "-timeout", appTimeout, "-deadline", "10s", "-report", ReportMount + "/app.json"}})
	if err != nil {
		t.Fatal(err)
	}
	app, err := readReport(ctx, r, gated, id, "app.json")
	if err != nil {
		t.Fatal(err)
	}
	if app.FirstFailed() {
		t.Errorf("app in the gated pod: first connect failed: %+v", app.Attempts[0])
	}

	records, err := logrec.ReadFile(logFile)
	if err != nil {
		t.Fatalf("netready's log: %v", err)
	}
	var plainAdd, gatedAdd *logrec.Record
	for i, rec := range records {
		if rec.Verb != "ADD" {
			continue
		}
		switch rec.Pod {
		case "default/plain":
			plainAdd = &records[i]
		case "default/gated":
			gatedAdd = &records[i]
		}
	}
	if plainAdd == nil || gatedAdd == nil {
		t.Fatalf("netready's log has no ADD record for default/plain or default/gated:\n%s", mustRead(t, logFile))
	}
	// Success: the ADD passed the result on (ready: the gate held; ok: nothing to gate).
	succeeded := func(r *logrec.Record) bool { return r.Outcome == logrec.Ready || r.Outcome == logrec.OK }
	if len(plainAdd.Probes) != 0 || !succeeded(plainAdd) {
		t.Errorf("ADD of the pod without the annotation: %+v, want success and no probes", *plainAdd)
	}
	if !succeeded(gatedAdd) || len(gatedAdd.Probes) != 1 || gatedAdd.Probes[0].URL != testbed.ProbeDB || gatedAdd.Probes[0].Origin != "annotation" {
		t.Errorf("ADD of the annotated pod: %+v, want success and probe %s from annotation", *gatedAdd, testbed.ProbeDB)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
