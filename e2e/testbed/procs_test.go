package testbed

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

func TestPids(t *testing.T) {
	cmd := exec.Command("sleep", "30.123")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	byCmdline := Pids(func(_ int, dir string) bool { return ProcCmdline(dir) == "sleep\x0030.123\x00" })
	if !slices.Equal(byCmdline, []int{cmd.Process.Pid}) {
		t.Errorf("by command line: %v, want [%d]", byCmdline, cmd.Process.Pid)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if self := Pids(func(_ int, dir string) bool { return ProcExe(dir) == exe }); slices.Contains(self, os.Getpid()) {
		t.Errorf("Pids listed this process: %v", self)
	}
	if sleeps := Pids(func(_ int, dir string) bool { return strings.HasSuffix(ProcExe(dir), "/sleep") }); !slices.Contains(sleeps, cmd.Process.Pid) {
		t.Errorf("by executable: %v lacks %d", sleeps, cmd.Process.Pid)
	}
}
