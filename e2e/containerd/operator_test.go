package containerd

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// operatorBed is where an operator's way of putting netready on a node is tried (install, the
// agent, the image): a bed with K3s's plugins only, a runtime on K3s's chain without netready,
// and netready built apart, in the returned dir.
func operatorBed(t *testing.T) (bed *testbed.Bed, r *Runtime, nrDir string) {
	t.Helper()
	SkipUnlessRoot(t)
	bed = testbed.New(t, testbed.Options{})
	nrDir = filepath.Join(bed.Dir, "nr-build")
	if err := testbed.Build(nrDir, testbed.Netready); err != nil {
		t.Fatal(err)
	}
	return bed, newRuntime(t, bed, testbed.K3sConflist("1.0.0")), nrDir
}

// runGated runs a pod while the path to the db is blocked and opens 1.5 s into its
// RunPodSandbox: a return before the opening means containerd did not run netready. The pod is
// removed; the fault, open, is returned for the test to block again.
func runGated(ctx context.Context, t *testing.T, bed *testbed.Bed, r *Runtime) *testbed.Fault {
	t.Helper()
	fault, err := bed.BlockRouter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	opened := fault.OpenAfter(1500 * time.Millisecond)
	pod, err := r.RunPod(ctx, PodConfig{Name: "gated"})
	returned := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if o := <-opened; o.Err != nil {
		t.Fatal(o.Err)
	} else if returned.Before(o.At) {
		t.Errorf("RunPodSandbox returned %v before the path to the db opened: containerd did not run netready", o.At.Sub(returned))
	}
	if err := r.RemovePod(ctx, pod); err != nil {
		t.Error(err)
	}
	return fault
}
