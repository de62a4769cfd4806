package containerd

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/e2e/containerd/internal/report"
	"github.com/netready/netready/e2e/testbed"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// newRuntime starts a Runtime on bed for the test and closes it when the test ends (before the
// bed, which was made first); a failed Close fails the test.
func newRuntime(t *testing.T, bed *testbed.Bed, conflist []byte) *Runtime {
	t.Helper()
	tools, err := Tools() // the first call of the process builds them: not part of the start-up time
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	r, err := Start(ctx, bed, Options{Conflist: conflist, Tools: tools})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd ready in %v (dir %s)", time.Since(start).Round(time.Millisecond), r.Dir)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log (tail):\n%s", r.LogTail(60))
		}
		dir := r.Dir
		if err := r.Close(); err != nil {
			t.Errorf("containerd: close: %v", err)
		}
		assertNoLeftovers(t, dir, r.CgroupParent)
	})
	return r
}

// assertNoLeftovers: nothing of the runtime is mounted, running, or on disk.
func assertNoLeftovers(t *testing.T, dir, cgroupParent string) {
	t.Helper()
	if m := testbed.MountsUnder(dir); len(m) > 0 {
		t.Errorf("mounts left under %s: %v", dir, m)
	}
	if p := runtimeProcs(dir, cgroupParent); len(p) > 0 {
		t.Errorf("processes left: %s", describeProcs(p))
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s left (%v)", dir, err)
	}
	if c := cgroupDirs(cgroupParent); len(c) > 0 {
		t.Errorf("cgroups left: %v", c)
	}
}

// TestRuntime: containerd in the node netns runs a pod through K3s's chain; its probe container
// reaches the db; Close leaves nothing behind, and nothing of containerd's lands in the host's
// default paths.
func TestRuntime(t *testing.T) {
	SkipUnlessRoot(t)
	// containerd's default paths: another containerd (Docker's) may own them; ours must not add any.
	defaults := []string{"/run/containerd", "/var/lib/containerd", "/opt/containerd", "/var/run/nri", "/etc/containerd"}
	existed := map[string]bool{}
	for _, p := range defaults {
		_, err := os.Stat(p)
		existed[p] = err == nil
	}
	bed := testbed.New(t)
	r := newRuntime(t, bed, testbed.K3sConflist("1.0.0"))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	pod, err := r.RunPod(ctx, PodConfig{Name: "smoke"})
	if err != nil {
		t.Fatal(err)
	}
	id, err := r.RunContainer(ctx, pod, ContainerConfig{Name: "app", Args: []string{"app", "-report", ReportMount + "/app.json", "-deadline", "10s"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := WaitFile(ctx, filepath.Join(pod.ReportDir, "app.json"))
	if err != nil {
		t.Fatalf("%v; logs:\n%s", err, r.Logs(ctx, id))
	}
	rep, err := report.Read(b)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Connected || rep.FirstFailed() {
		t.Errorf("probe with the path open: %+v", rep)
	}
	if code, err := r.WaitExited(ctx, id); err != nil || code != 0 {
		t.Errorf("probe exit %d, %v", code, err)
	}
	if logs := r.Logs(ctx, id); !strings.Contains(logs, "connected") {
		t.Errorf("crictl logs: %q", logs)
	}
	// The pod's eth0 is on the bed's cni0, in the node netns.
	out, err := bed.Node.IP(ctx, "link", "show", "master", "cni0")
	if err != nil || !strings.Contains(string(out), "veth") {
		t.Errorf("no veth on cni0 in the node netns: %s %v", out, err)
	}
	if err := r.RemovePod(ctx, pod); err != nil {
		t.Error(err)
	}
	for _, p := range defaults {
		if _, err := os.Stat(p); err == nil && !existed[p] {
			t.Errorf("%s exists: the runtime wrote outside its dir", p)
		}
	}
}
