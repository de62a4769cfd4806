package containerd

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// TestImageRuns: the image `make image` writes (packaging/image, here for this machine's arch
// only) imports into real containerd with `ctr images import`, and a container of it runs the
// binary as the image's non-root user.
func TestImageRuns(t *testing.T) {
	SkipUnlessRoot(t)
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skipf("the image is built for amd64, arm64 and armv7; this test runs it on amd64 or arm64, not %s", runtime.GOARCH)
	}
	bed, r, nrDir := operatorBed(t)
	ctx := t.Context()

	out := filepath.Join(bed.Dir, "image")
	build := exec.CommandContext(ctx, "go", "run", ".", "-version", "e2e", "-epoch", "0", "-out", out,
		"-bin", runtime.GOARCH+"="+filepath.Join(nrDir, testbed.Netready))
	build.Dir = filepath.Join("..", "..", "packaging", "image")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("packaging/image: %v\n%s", err, b)
	}
	const ref = "docker.io/netready/netready:e2e"
	single := fmt.Sprintf("netready-image-e2e-linux-%s.tar", runtime.GOARCH)
	for _, tarball := range []string{single, "netready-image-e2e-oci.tar"} {
		if b, err := r.Ctr(ctx, "images", "import", filepath.Join(out, tarball)); err != nil {
			t.Fatalf("ctr images import %s: %v\n%s", tarball, err, b)
		}
		b, err := r.Crictl(ctx, "inspecti", ref)
		if err != nil {
			t.Fatalf("%s imported but the CRI plugin does not list %s: %v", tarball, ref, err)
		}
		if !strings.Contains(string(b), `"/netready"`) || !strings.Contains(string(b), "65532") {
			t.Errorf("%s: image config lacks the entrypoint or the user:\n%.2000s", tarball, b)
		}
		if b, err := r.Crictl(ctx, "rmi", ref); err != nil { // so the next tarball is checked on its own
			t.Fatalf("crictl rmi %s: %v\n%s", ref, err, b)
		}
	}
	if b, err := r.Ctr(ctx, "images", "import", filepath.Join(out, single)); err != nil {
		t.Fatalf("re-import: %v\n%s", err, b)
	}
	pod, err := r.RunPod(ctx, PodConfig{Name: "image"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.RemovePod(ctx, pod)
	id, err := r.RunContainer(ctx, pod, ContainerConfig{Name: "netready", Image: ref, Args: []string{"version"}})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	code, err := r.WaitExited(wctx, id)
	if err != nil {
		t.Fatal(err)
	}
	logs := r.Logs(ctx, id)
	if code != 0 || !strings.Contains(logs, "netready ") {
		t.Errorf("netready version in the image: exit %d, output %q", code, logs)
	}
}
