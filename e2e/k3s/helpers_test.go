package k3s

import (
	"bufio"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// netreadyLog is netready's log file on the node (logFile in the owned conflist): a failed
// plugin's stderr never reaches containerd's log.
func netreadyLog(n *Node) string { return filepath.Join(n.Dir, "netready.log") }

// netreadyConf is netready's object for the owned conflist: probe the db, the given timeout,
// annotations from pods honoured, its log in the run's dir; extra fields override.
func netreadyConf(n *Node, timeout string, extra map[string]any) map[string]any {
	c := map[string]any{
		"capabilities": map[string]any{"io.kubernetes.cri.pod-annotations": true},
		"probes":       []string{testbed.ProbeDB},
		"timeout":      timeout,
		"skip":         map[string]any{"namespaces": []string{"kube-system"}},
		"logFile":      netreadyLog(n),
	}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

// install installs netready with conf for the test and uninstalls it when the test ends.
func install(t *testing.T, n *Node, conf map[string]any) {
	t.Helper()
	if err := n.InstallNetready(conf); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.UninstallNetready(); err != nil {
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

// logLine is the part of netready's log line the tier reads.
type logLine struct {
	Time    time.Time   `json:"time"` // when the line was written: the end of the ADD
	Verb    string      `json:"verb"`
	Outcome string      `json:"outcome"`
	Pod     string      `json:"pod"`
	TotalMS float64     `json:"total_ms"`
	Msg     string      `json:"msg"`
	Probes  []probeLine `json:"probes"`
}

// probeLine is a probe in netready's log line, with where it came from (config, rule, annotation).
type probeLine struct {
	URL    string `json:"url"`
	Origin string `json:"origin"`
}

// addLines returns netready's ADD lines for pod ("ns/name").
func addLines(t *testing.T, n *Node, pod string) []logLine {
	t.Helper()
	f, err := os.Open(netreadyLog(n))
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
		if json.Unmarshal(s.Bytes(), &l) == nil && l.Verb == "ADD" && l.Pod == pod {
			out = append(out, l)
		}
	}
	return out
}

// percentile is the nearest-rank percentile p (0-100) of xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func round1(x float64) float64 { return math.Round(x*10) / 10 }

// podName is a valid pod name.
func podName(parts ...string) string { return strings.ToLower(strings.Join(parts, "-")) }

// netreadyProcs lists the PIDs of running netready plugin processes (the node's CNI bin dir).
func netreadyProcs(n *Node) []int {
	bin := filepath.Join(n.CNIBinDir(), "netready")
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && exe == bin {
			pids = append(pids, pid)
		}
	}
	return pids
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
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && slices.Contains(exes, exe) {
			pids = append(pids, pid)
		}
	}
	return pids
}
