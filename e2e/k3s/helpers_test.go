package k3s

import (
	"bufio"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/internal/logrec"
)

// netreadyLog is netready's log file on the node (logFile in the owned conflist): a failed
// plugin's stderr never reaches containerd's log.
func netreadyLog(n *Node) string { return filepath.Join(n.Dir, "netready.log") }

// installArgs are `netready install`'s flags for the tier: the given timeout and probes
// (kube-system skipped, pod annotations honoured: install's defaults).
func installArgs(timeout string, probes ...string) []string {
	args := []string{"--timeout", timeout}
	for _, p := range probes {
		args = append(args, "--probe", p)
	}
	return args
}

// install runs `netready install` on the node with the given timeout and probes, its log in
// netreadyLog, waits until containerd has loaded the chain, and uninstalls (`netready
// uninstall`) when the test ends.
func install(t *testing.T, n *Node, timeout string, probes ...string) {
	t.Helper()
	if _, err := n.InstallNetready(t.Context(), netreadyLog(n), installArgs(timeout, probes...)...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := n.UninstallNetready(context.Background()); err != nil {
			t.Error(err)
		}
	})
	waitChain(t, n, true)
}

// waitChain waits (up to 30 s) until containerd's loaded chain does, or does not, end in netready.
func waitChain(t *testing.T, n *Node, withNetready bool) []string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		chain, err := n.LiveChain(t.Context())
		if err == nil && slices.Contains(chain, "netready") == withNetready {
			return chain
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd's loaded chain %v (err %v), want netready in it: %v", chain, err, withNetready)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// logLine is netready's log line, as the plugin writes it.
type logLine = logrec.Record

// addLines returns netready's ADD lines for pod ("ns/name") in the tier's log.
func addLines(t *testing.T, n *Node, pod string) []logLine {
	t.Helper()
	return addLinesIn(t, netreadyLog(n), pod)
}

// addLinesIn returns the ADD lines for pod ("ns/name", or every pod when "") in the netready log file path.
func addLinesIn(t *testing.T, path, pod string) []logLine {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []logLine
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 4<<20)
	for s.Scan() {
		var l logLine
		if json.Unmarshal(s.Bytes(), &l) == nil && l.Verb == "ADD" && (l.Pod == pod || pod == "") {
			out = append(out, l)
		}
	}
	return out
}

func round1(x float64) float64 { return math.Round(x*10) / 10 }

// podName is a valid pod name.
func podName(parts ...string) string { return strings.ToLower(strings.Join(parts, "-")) }

// netreadyProcs lists the PIDs of running netready plugin processes (the node's CNI bin dir).
func netreadyProcs(n *Node) []int {
	bin := filepath.Join(n.CNIBinDir(), "netready")
	return testbed.Pids(func(_ int, dir string) bool { return testbed.ProcExe(dir) == bin })
}

// alive reports whether pid still runs (and is not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] != "Z"
}

func itoa(i int) string { return strconv.Itoa(i) }

// procsByExe lists the PIDs whose executable is one of exes.
func procsByExe(exes ...string) []int {
	return testbed.Pids(func(_ int, dir string) bool { return slices.Contains(exes, testbed.ProcExe(dir)) })
}

// blockAndWatch blocks the node's path beyond the router until the test ends, and watches the
// node's veths until then.
func blockAndWatch(t *testing.T, n *Node) (*testbed.Fault, *VethWatch) {
	t.Helper()
	fault, err := n.Bed.BlockRouter(context.Background()) // not t.Context(): canceled before Cleanup lifts the fault
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fault.Unblock() })
	watch, err := n.WatchVeths()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { watch.Close() })
	return fault, watch
}

// applyBlocked blocks the path, applies p and waits (up to a minute) for its veth in the node:
// the moment the pod's network is set up. created is when Apply was called.
func applyBlocked(ctx context.Context, t *testing.T, n *Node, fault *testbed.Fault, watch *VethWatch, p PodSpec) (created, vethAt time.Time) {
	t.Helper()
	if err := fault.Block(); err != nil {
		t.Fatal(err)
	}
	veth := watch.Next()
	created = time.Now()
	if err := n.Apply(ctx, p); err != nil {
		t.Fatal(err)
	}
	select {
	case vethAt = <-veth:
	case <-time.After(time.Minute):
		t.Fatalf("pod %s: no veth in the node within a minute: %s", p.Name, n.describe(ctx, p.Namespace, p.Name))
	}
	return created, vethAt
}

// notReadyAfter3s is netready's timeout message at a 3 s budget: "3s" when the ADD answers
// within half a millisecond of its deadline (it leaves its closing to its exit), "3.004s" when
// later.
var notReadyAfter3s = regexp.MustCompile(`pod network not ready after 3(\.\d+)?s`)
