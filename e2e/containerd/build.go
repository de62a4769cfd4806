package containerd

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/netready/netready/internal/testbin"
)

// Binary names in a tools dir.
const (
	Containerd = "containerd"
	Shim       = "containerd-shim-runc-v2"
	Ctr        = "ctr"
	Runc       = "runc"
	Crictl     = "crictl"
	Pause      = "pause" // the pause image's process (e2e/pause)
	Probe      = "probe" // the probe image's entrypoint (cmd/probe)
)

const modulePath = "github.com/netready/netready/e2e/containerd"

// The runtime's packages, pinned by the tool directives in this module's go.mod. runc needs cgo
// (its nsenter is C); it is built without the seccomp tag, as the machine has no libseccomp-dev
// and the tests' pods ask for no seccomp profile (CRI's default is unconfined).
var (
	staticPkgs = []string{
		"github.com/containerd/containerd/v2/cmd/containerd",
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
		"github.com/containerd/containerd/v2/cmd/ctr",
		"sigs.k8s.io/cri-tools/cmd/crictl",
		"github.com/netready/netready/e2e/pause", // shared with the K3s tier
		modulePath + "/cmd/probe",
	}
	cgoPkgs = []string{"github.com/opencontainers/runc"}
)

var (
	toolsMu sync.Mutex
	// guarded by toolsMu
	toolsDir string
	toolsErr error
)

// ToolsDirEnv names a dir that already holds every binary (from an earlier BuildTools): then
// nothing is built, and the dir is left alone.
const ToolsDirEnv = "NETREADY_E2E_TOOLS"

// Tools returns the dir holding the runtime's binaries, building them on the first call of the
// process into the dir Main made (or the one ToolsDirEnv names). Later calls return the same
// dir, or the same error. The go command's build cache makes a second process's build a link.
func Tools() (string, error) {
	toolsMu.Lock()
	defer toolsMu.Unlock()
	if toolsDir != "" || toolsErr != nil {
		return toolsDir, toolsErr
	}
	if dir := os.Getenv(ToolsDirEnv); dir != "" {
		toolsDir, toolsErr = dir, haveTools(dir)
		return toolsDir, toolsErr
	}
	if processToolsDir == "" {
		toolsErr = fmt.Errorf("containerd.Tools: no tools dir; call containerd.Main from TestMain (or set %s)", ToolsDirEnv)
		return "", toolsErr
	}
	start := time.Now()
	if toolsErr = BuildTools(processToolsDir); toolsErr == nil {
		toolsDir = processToolsDir
		fmt.Fprintf(os.Stderr, "containerd: built the runtime's binaries in %v\n", time.Since(start).Round(100*time.Millisecond))
	}
	return toolsDir, toolsErr
}

// processToolsDir is made by Main and removed when the tests are done.
var processToolsDir string

// BuildTools builds containerd, its shim, ctr, runc, crictl, and the images' programs into dir,
// from this module's go.mod. The images' programs are static, as an image without a libc needs.
func BuildTools(dir string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := goBuild(root, dir, "0", staticPkgs...); err != nil {
		return err
	}
	if err := goBuild(root, dir, "1", cgoPkgs...); err != nil {
		return fmt.Errorf("%w (runc needs cgo: is gcc installed?)", err)
	}
	return haveTools(dir)
}

func goBuild(root, dir, cgo string, pkgs ...string) error {
	env := []string{"CGO_ENABLED=" + cgo, "GOOS=linux", "GOARCH=" + runtime.GOARCH}
	return testbin.GoBuild(root, dir+string(filepath.Separator), env, []string{"-ldflags=-s -w"}, pkgs...)
}

func haveTools(dir string) error {
	for _, name := range []string{Containerd, Shim, Ctr, Runc, Crictl, Pause, Probe} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("containerd tools dir %s: %w", dir, err)
		}
	}
	return nil
}

// moduleRoot finds this module's go.mod: walking up from the working dir (go test runs in the
// package's dir), else next to this source file.
func moduleRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, start := range starts {
		for dir := start; ; dir = filepath.Dir(dir) {
			if goModModule(filepath.Join(dir, "go.mod")) == modulePath {
				return dir, nil
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	return "", fmt.Errorf("no go.mod of module %s above %v", modulePath, starts)
}

func goModModule(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if line := strings.TrimSpace(s.Text()); strings.HasPrefix(line, "module ") {
			return strings.TrimSpace(strings.TrimPrefix(line, "module "))
		}
	}
	return ""
}
