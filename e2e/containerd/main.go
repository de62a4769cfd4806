package containerd

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/netready/netready/e2e/testbed"
)

// Main runs a test binary's tests: it first removes what killed runs left (RemoveStale, then
// testbed's), gives the process one tools dir (built on first use by Tools) and one plugin dir
// shared by its beds (testbed.Main), and removes both afterwards. Use it from TestMain:
// os.Exit(containerd.Main(m)).
func Main(m *testing.M) int {
	if os.Geteuid() == 0 {
		removed, err := RemoveStale()
		for _, r := range removed {
			fmt.Fprintln(os.Stderr, "containerd: removed the leftovers of a killed run:", r)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "containerd: removing the leftovers of killed runs:", err)
		}
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("nr-%d-tools-", os.Getpid()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "containerd.Main:", err)
		return 1
	}
	processToolsDir = dir
	code := testbed.Main(m)
	// Every Runtime's Close checks its own leftovers; this catches a process of the built
	// binaries (containerd, a shim, runc) that escaped them.
	if pids := procsOfExeDir(dir); len(pids) > 0 {
		fmt.Fprintln(os.Stderr, "containerd: processes of this run still running, killing them:", describeProcs(pids))
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		code = 1
	}
	os.RemoveAll(dir)
	return code
}

// procsOfExeDir lists the processes whose executable is in dir.
func procsOfExeDir(exeDir string) []int {
	return testbed.Pids(func(_ int, dir string) bool { return strings.HasPrefix(testbed.ProcExe(dir), exeDir+"/") })
}

// SkipUnlessRoot skips the test when not run as root.
func SkipUnlessRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: starts containerd and runc, and creates network namespaces, veths and nftables rules (CI runs as root)")
	}
}
