package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// taskLookup is a path under /proc that names one thread's directory: /proc/PID/task/TID (what
// netns.Get opens) or /proc/thread-self (a link to it).
var taskLookup = regexp.MustCompile(`"/proc/(\d+/task/\d+|thread-self)(/[^"]*)?"`)

// TestNetreadyNoProcTaskLookups: an ADD that waits (the pod's netns opened, its netlink view, the
// node's watchers, the coordination table, the CNI_NETNS check) looks up no /proc/PID/task/TID.
// Each such lookup leaves dentries that the kernel invalidates when the runtime reaps the
// process, which made the ADDs an opening releases at once costlier to reap than to run
// (internal/threadns; README, "How the gate waits"). A library call can bring one back; strace of
// the real binary, run by libcni in a simulated node, finds it.
func TestNetreadyNoProcTaskLookups(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("needs strace (scripts/test-deps.sh installs it)")
	}
	ctx := testContext(t)
	// netready runs under strace, in a bin dir of the test's own (the other tests share one).
	bin := t.TempDir()
	if err := testbed.Build(bin, testbed.WithNetready...); err != nil {
		t.Fatal(err)
	}
	b := testbed.New(t, testbed.Options{BinDir: bin, Plugins: testbed.WithNetready})
	real := filepath.Join(b.BinDir, "netready.real")
	if err := os.Rename(filepath.Join(b.BinDir, "netready"), real); err != nil {
		t.Fatal(err)
	}
	trace := filepath.Join(t.TempDir(), "strace")
	wrapper := fmt.Sprintf("#!/bin/sh\nexec %s -f -qq -A -e trace=open,openat,openat2,stat,lstat,newfstatat,statx,readlink,readlinkat -o %s %s \"$@\"\n",
		strace, trace, real)
	if err := os.WriteFile(filepath.Join(b.BinDir, "netready"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	list, logFile := netreadyList(t, b, map[string]any{"probes": []string{testbed.ProbeDB}, "timeout": "20s"})
	pod := newPod(t, b)
	// The path opens 1.5 s after ADD starts: long after netready, slowed by strace, began to wait.
	opened := fault(t)(b.BlackholeNode(ctx)).OpenAfter(1500 * time.Millisecond)
	if _, err := b.Add(ctx, list, pod); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if o, ok := <-opened; !ok || o.Err != nil {
		t.Fatalf("lifting the fault: %v", o.Err)
	}
	if err := b.Del(ctx, list, pod); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	// The ADD waited: otherwise the wait's lookups were never made.
	if c := lastRecord(t, logFile, "ADD").condition(t, testbed.ProbeDB); !c.Ready || c.Attempts < 2 {
		t.Fatalf("log: %s ready=%v after %d attempts; the ADD must wait for this test to mean anything", c.Name, c.Ready, c.Attempts)
	}

	out, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	procs := 0
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, `"/proc/`) {
			procs++
		}
		if taskLookup.MatchString(line) {
			found = append(found, line)
		}
	}
	if len(found) > 0 {
		t.Errorf("netready looked up a thread's /proc directory %d times (ADD and DEL); the first: %s", len(found), found[0])
	}
	if procs == 0 { // the Go runtime's /proc/self/cgroup at least: the trace saw the process
		t.Errorf("strace recorded no /proc lookup at all; its trace:\n%s", out)
	}
	t.Logf("%d lookups under /proc traced, %d of a thread's directory", procs, len(found))
}
