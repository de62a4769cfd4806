// Package testbin builds the repository's binaries for tests and runs a CNI
// plugin binary the way a runtime does: the one `go build` and the one exec
// that every test uses.
package testbin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// NetreadyPkg is the plugin's import path.
const NetreadyPkg = "github.com/netready/netready/plugin/netready"

// GoBuild runs `go build -trimpath [flags] -o out pkgs...` in dir, whose
// go.mod pins the versions. out is a file for one package, or a directory
// ending in a path separator for several (each binary named after its
// package). The build is static (CGO_ENABLED=0, as a node's CNI bin dir
// expects) unless env sets CGO_ENABLED; env adds to the environment.
func GoBuild(dir, out string, env, flags []string, pkgs ...string) error {
	args := append(append([]string{"build", "-trimpath"}, flags...), "-o", out)
	cmd := exec.Command("go", append(args, pkgs...)...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0"), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s (in %s): %w\n%s", strings.Join(pkgs, " "), dir, err, bytes.TrimSpace(b))
	}
	return nil
}

// Netready builds the plugin into t's temp dir and returns the binary's
// path. Go's build cache makes a second build in one run cheap.
func Netready(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "netready")
	if err := GoBuild(".", bin, nil, nil, NetreadyPkg); err != nil {
		t.Fatal(err)
	}
	return bin
}

// runDirEnv is podcheck.RunDirEnv, written out so that this helper does not link the product.
const runDirEnv = "NETREADY_RUN_DIR"

// Call is one run of a plugin binary as a runtime makes it.
type Call struct {
	Binary string
	// Env is the CNI_* environment, exactly (PATH is added); an empty value
	// leaves the variable out.
	Env   map[string]string
	Stdin []byte
	// NetNS is the netns path the child starts in: the runtime's own (on a
	// node, the node's), never the pod's; "" for this process's.
	NetNS string
	// Started, if set, gets the child's pid once it runs (to signal it).
	Started func(pid int)
	// Timeout bounds the run (30s when zero); the child is killed then.
	Timeout time.Duration
}

// Result is what the runtime sees of a Call.
type Result struct {
	Stdout, Stderr []byte
	Exit           int           // the exit code; -1 when killed by a signal
	Took, CPU      time.Duration // wall-clock time, and CPU time (user and system)
}

// Run runs c. The error says the plugin could not be started or did not
// end by itself; a plugin that exits non-zero is a Result, not an error.
func Run(ctx context.Context, c Call) (Result, error) {
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Binary)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	// The test's coordination dir (testbed.Main sets it), as a runtime passes its own environment
	// on: netready's files then go with the test's, not into the host's /run/netready.
	if dir := os.Getenv(runDirEnv); dir != "" {
		cmd.Env = append(cmd.Env, runDirEnv+"="+dir)
	}
	for k, v := range c.Env {
		if v != "" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Stdin = bytes.NewReader(c.Stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// A child of the plugin that keeps its stdout open must not hold the
	// run past the plugin's own end.
	cmd.WaitDelay = time.Second

	start := time.Now()
	var err error
	if c.NetNS != "" {
		// A child starts in the netns of the thread that forks it.
		err = ns.WithNetNSPath(c.NetNS, func(ns.NetNS) error { return cmd.Start() })
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return Result{}, fmt.Errorf("starting %s: %w", c.Binary, err)
	}
	if c.Started != nil {
		c.Started(cmd.Process.Pid)
	}
	err = cmd.Wait()
	r := Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Took: time.Since(start)}
	if ps := cmd.ProcessState; ps != nil {
		r.CPU = ps.UserTime() + ps.SystemTime()
		r.Exit = ps.ExitCode()
	}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return r, fmt.Errorf("%s did not end within %v", c.Binary, c.Timeout)
	case errors.As(err, &ee) && ee.Exited():
	case err != nil:
		return r, fmt.Errorf("%s: %w (after %v)", c.Binary, err, r.Took)
	}
	return r, nil
}
