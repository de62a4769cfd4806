package testbed

import (
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestPids(t *testing.T) {
	cmd := exec.Command("sleep", "30.123")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Start returns once the child's close-on-exec pipe closes, which the kernel does before it
	// sets the new program's argument pointers: for a moment /proc/PID/cmdline reads empty.
	waitCmdline(t, cmd.Process.Pid, "sleep\x0030.123\x00")
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

// waitCmdline waits, up to 5 s, until the process pid shows want as its command line.
func waitCmdline(t *testing.T, pid int, want string) {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid)
	for deadline := time.Now().Add(5 * time.Second); ProcCmdline(dir) != want; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d: command line %q after 5s, want %q", pid, ProcCmdline(dir), want)
		}
	}
}
