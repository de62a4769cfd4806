package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/netready/netready/pkg/podcheck"
)

// sharedBinDir is the process-wide plugin dir made by Main; empty without Main.
var sharedBinDir string

// Main runs a test binary's tests (m.Run) with one plugin dir shared by all their beds, and
// removes it afterwards. Use it from TestMain: os.Exit(testbed.Main(m)). Without it, New builds
// into each test's own temp dir, which is correct but slower. It first removes what killed runs
// left behind (RemoveStale).
func Main(m *testing.M) int {
	if os.Geteuid() == 0 {
		removed, err := RemoveStale()
		for _, r := range removed {
			fmt.Fprintln(os.Stderr, "testbed: removed the leftover of a killed run:", r)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "testbed: removing leftovers of killed runs:", err)
		}
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("nr-%d-bin-", os.Getpid()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "testbed.Main:", err)
		return 1
	}
	sharedBinDir = dir
	defer os.RemoveAll(dir)
	// netready's coordination files (pkg/coord) go with the run's, not into the host's
	// /run/netready; a test may set another dir of its own.
	runDir := filepath.Join(dir, "run")
	if err := os.Mkdir(runDir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "testbed.Main:", err)
		return 1
	}
	os.Setenv(podcheck.RunDirEnv, runDir)
	return m.Run()
}

// New starts a bed for a test (with opts[0] if given) and closes it when the test ends; it skips
// the test when not run as root. Plugins are built into the shared dir of Main (or the test's
// temp dir) unless BinDir is set.
func New(t testing.TB, opts ...Options) *Bed {
	t.Helper()
	SkipUnlessRoot(t)
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	return newForTest(t, o)
}

func newForTest(t testing.TB, opts Options) *Bed {
	t.Helper()
	if opts.BinDir == "" {
		opts.BinDir = sharedBinDir
		if opts.BinDir == "" {
			opts.BinDir = t.TempDir()
		}
		if err := Build(opts.BinDir, opts.Plugins...); err != nil {
			t.Fatal(err)
		}
	}
	b, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("testbed %s: close: %v", b.Prefix, err)
		}
	})
	return b
}

// SkipUnlessRoot skips the test when not run as root.
func SkipUnlessRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths, routes and nftables rules (CI runs as root)")
	}
}
