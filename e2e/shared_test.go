package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/pkg/podcheck"
)

// Many ADDs waiting on one target share its probing through the
// coordination directory (pkg/coord): real netready processes, run by libcni
// from the bed's node netns.

// sharedDir is a private coordination directory for the test (0700, as
// netready requires), handed to every netready through the environment
// libcni passes on.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv(podcheck.RunDirEnv, dir)
	return dir
}

// waiters ADDs every pod at once; results come on the returned channel, one per pod.
type added struct {
	pod *testbed.Pod
	err error
	at  time.Time
}

func addAll(ctx context.Context, b *testbed.Bed, list *libcni.NetworkConfigList, pods []*testbed.Pod) <-chan added {
	out := make(chan added, len(pods))
	for _, p := range pods {
		go func() {
			_, err := b.Add(ctx, list, p)
			out <- added{p, err, time.Now()}
		}()
	}
	return out
}

// netreadyPIDs maps the container ids of running netready processes (their CNI_CONTAINERID) to pids.
func netreadyPIDs() map[string]int {
	out := map[string]int{}
	testbed.Pids(func(pid int, dir string) bool {
		if testbed.ProcComm(dir) == testbed.Netready {
			if id, ok := testbed.ProcEnv(dir, "CNI_CONTAINERID"); ok {
				out[id] = pid
			}
		}
		return false
	})
	return out
}

// waitRunning waits until netready runs for every pod, and returns their pids by container id.
func waitRunning(t *testing.T, pods []*testbed.Pod) map[string]int {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		running := netreadyPIDs()
		ours := map[string]int{}
		for _, p := range pods {
			if pid, ok := running[p.ContainerID]; ok {
				ours[p.ContainerID] = pid
			}
		}
		if len(ours) == len(pods) {
			return ours
		}
		if time.Now().After(deadline) {
			t.Fatalf("netready runs for %d of %d pods after a minute", len(ours), len(pods))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cpuTicks reads utime+stime (in clock ticks) of each pid, by container id.
func cpuTicks(pids map[string]int) map[string]int {
	out := map[string]int{}
	for id, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
		if len(f) > 12 {
			u, _ := strconv.Atoi(f[11])
			s, _ := strconv.Atoi(f[12])
			out[id] = u + s
		}
	}
	return out
}

// leaders returns the pids that hold an flock on a lead file in dir (from /proc/locks).
func leaders(t *testing.T, dir string) []int {
	t.Helper()
	inodes := map[uint64]bool{}
	matches, _ := filepath.Glob(filepath.Join(dir, "*.lead"))
	for _, m := range matches {
		var st syscall.Stat_t
		if err := syscall.Stat(m, &st); err == nil {
			inodes[st.Ino] = true
		}
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" || fields[3] != "WRITE" {
			continue
		}
		dev := strings.Split(fields[5], ":")
		ino, err := strconv.ParseUint(dev[len(dev)-1], 10, 64)
		pid, perr := strconv.Atoi(fields[4])
		if err == nil && perr == nil && inodes[ino] {
			pids = append(pids, pid)
		}
	}
	return pids
}

// routerCounter counts the pods' SYNs to the db in the router, ahead of any drop.
func routerCounter(t *testing.T, ctx context.Context, b *testbed.Bed) func() int64 {
	t.Helper()
	script := fmt.Sprintf(`table inet nr_shared {
	counter syn { }
	chain forward {
		type filter hook forward priority filter - 20; policy accept;
		ip saddr %s ip daddr %s tcp dport %d tcp flags syn counter name "syn"
	}
}
`, testbed.ClusterCIDR, testbed.DBAddr, testbed.TCPPort)
	if _, err := b.Router.ExecInput(ctx, script, "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Router.Exec(context.Background(), "nft", "delete", "table", "inet", "nr_shared") })
	return func() int64 {
		out, err := b.Router.Exec(ctx, "nft", "-j", "list", "counter", "inet", "nr_shared", "syn")
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Nftables []struct {
				Counter *struct{ Packets int64 } `json:"counter"`
			} `json:"nftables"`
		}
		if err := json.Unmarshal(out, &doc); err != nil {
			t.Fatal(err)
		}
		for _, e := range doc.Nftables {
			if e.Counter != nil {
				return e.Counter.Packets
			}
		}
		t.Fatalf("no counter in %s", out)
		return 0
	}
}

// newPods makes n pods to ADD at once, on a node that already runs a pod (Bed.Resident): on a
// fresh cni0, concurrent ADDs of the bridge plugin change its MAC under the pods' feet.
func newPods(t *testing.T, b *testbed.Bed, n int) []*testbed.Pod {
	t.Helper()
	if _, err := b.Resident(testContext(t)); err != nil {
		t.Fatal(err)
	}
	pods := make([]*testbed.Pod, n)
	for i := range pods {
		pods[i] = newPod(t, b)
	}
	return pods
}

func delAll(b *testbed.Bed, list *libcni.NetworkConfigList, pods []*testbed.Pod) {
	var wg sync.WaitGroup
	for _, p := range pods {
		wg.Go(func() { b.Del(context.Background(), list, p) })
	}
	wg.Wait()
}

// TestSharedWait: 30 pods wait on one blocked target. The probes reaching the router stay under
// 40 a second (without sharing: 30 × 25); exactly one netready leads; when it is killed with
// SIGKILL another takes over within a slow interval; when the path opens every other ADD returns
// ready within a second.
//
// make test runs 30 pods, to keep its wall time modest; NETREADY_SHARED_PODS=110 runs K3s's
// default maximum per node.
func TestSharedWait(t *testing.T) {
	testbed.SkipUnlessRoot(t)
	n := 30
	if v, err := strconv.Atoi(os.Getenv("NETREADY_SHARED_PODS")); err == nil && v > 0 && v <= 200 {
		n = v
	}
	dir := sharedDir(t)
	ctx := testContext(t)
	b := testbed.New(t, testbed.Options{Plugins: testbed.WithNetready})
	list, _ := faultList(t, b, "50s", `,"probes":["`+testbed.ProbeDB+`"]`)
	fault, err := b.BlockRouter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	syns := routerCounter(t, ctx, b)
	pods := newPods(t, b, n)
	t.Cleanup(func() { delAll(b, list, pods) })
	results := addAll(ctx, b, list, pods)
	pids := waitRunning(t, pods)

	time.Sleep(2 * time.Second) // past every quick round
	c1, t1, cpu1 := syns(), time.Now(), cpuTicks(pids)
	time.Sleep(3 * time.Second)
	rate := float64(syns()-c1) / time.Since(t1).Seconds()
	cpu2 := cpuTicks(pids)
	var per []string
	total := 0
	for id, pid := range pids {
		per = append(per, fmt.Sprintf("%d:%d", pid, cpu2[id]-cpu1[id]))
		total += cpu2[id] - cpu1[id]
	}
	t.Logf("%d pods waiting: %.1f SYNs/s at the router; CPU %.3f cores (ticks per pid over %v: %s)",
		n, rate, float64(total)*0.01/time.Since(t1).Seconds(), time.Since(t1).Round(time.Millisecond), strings.Join(per, " "))
	if rate > 40 {
		t.Errorf("%.1f probe packets/s for %d waiting pods, want ≤ 40 whatever the number of pods", rate, n)
	}

	lead := leaders(t, dir)
	if len(lead) != 1 {
		t.Fatalf("pids holding the lead: %v, want exactly one", lead)
	}
	killed := ""
	for id, pid := range pids {
		if pid == lead[0] {
			killed = id
		}
	}
	if killed == "" {
		t.Fatalf("the leader (pid %d) is not one of the pods' netready processes %v", lead[0], pids)
	}
	if err := syscall.Kill(lead[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	for {
		if now := leaders(t, dir); len(now) == 1 && now[0] != lead[0] {
			t.Logf("pid %d took over %v after the leader was killed", now[0], time.Since(killedAt).Round(time.Millisecond))
			break
		}
		if time.Since(killedAt) > 1500*time.Millisecond {
			t.Fatalf("no netready took the lead within 1.5s of the leader's SIGKILL (holders: %v)", leaders(t, dir))
		}
		time.Sleep(20 * time.Millisecond)
	}

	opened, err := fault.Unblock()
	if err != nil {
		t.Fatal(err)
	}
	var slowest time.Duration
	fastest := time.Hour
	for range n {
		r := <-results
		if r.pod.ContainerID == killed {
			if r.err == nil {
				t.Errorf("the killed leader's ADD succeeded")
			}
			continue
		}
		if r.err != nil {
			t.Errorf("ADD of %s: %v", r.pod.Name, r.err)
			continue
		}
		slowest = max(slowest, r.at.Sub(opened))
		fastest = min(fastest, r.at.Sub(opened))
	}
	t.Logf("every other ADD returned %v to %v after the opening", fastest.Round(time.Millisecond), slowest.Round(time.Millisecond))
	if slowest > time.Second {
		t.Errorf("the last ADD returned %v after the opening, want well under a second (woken by the leader)", slowest)
	}
}

// TestSharedPerPodPolicy: the target opens for some pods only (an egress policy per namespace,
// here a drop of the others' addresses in the router). The pods it opened for return; the others
// do not take the leader's answer for theirs and keep waiting, one of them leading; when their
// path opens too, they return.
func TestSharedPerPodPolicy(t *testing.T) {
	testbed.SkipUnlessRoot(t)
	const n = 6
	sharedDir(t)
	ctx := testContext(t)
	b := testbed.New(t, testbed.Options{Plugins: testbed.WithNetready})
	list, _ := faultList(t, b, "40s", `,"probes":["`+testbed.ProbeDB+`"]`)
	fault, err := b.BlockRouter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pods := newPods(t, b, n)
	t.Cleanup(func() { delAll(b, list, pods) })
	results := addAll(ctx, b, list, pods)
	waitRunning(t, pods)

	// The second half's addresses stay dropped after the opening.
	closed := map[string]bool{}
	var addrs []string
	for _, p := range pods[n/2:] {
		out, err := p.IP(ctx, "-4", "-o", "addr", "show", "dev", p.IfName)
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(out))
		if len(f) < 4 {
			t.Fatalf("no address on %s: %s", p.Name, out)
		}
		addrs = append(addrs, strings.Split(f[3], "/")[0])
		closed[p.ContainerID] = true
	}
	script := fmt.Sprintf(`table inet nr_policy {
	chain forward {
		type filter hook forward priority filter - 30; policy accept;
		ip saddr { %s } ip daddr %s drop
	}
}
`, strings.Join(addrs, ", "), testbed.DBAddr)
	if _, err := b.Router.ExecInput(ctx, script, "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Router.Exec(context.Background(), "nft", "delete", "table", "inet", "nr_policy") })

	if _, err := fault.Unblock(); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(3 * time.Second)
	for range n / 2 {
		select {
		case r := <-results:
			if closed[r.pod.ContainerID] {
				t.Fatalf("ADD of %s returned (%v) while its path is still dropped", r.pod.Name, r.err)
			}
			if r.err != nil {
				t.Fatalf("ADD of %s: %v", r.pod.Name, r.err)
			}
		case <-deadline:
			t.Fatal("the pods whose path opened did not all return within 3s")
		}
	}
	select {
	case r := <-results:
		t.Fatalf("ADD of %s returned (%v) while its path is still dropped", r.pod.Name, r.err)
	case <-time.After(2 * time.Second):
	}
	opened := time.Now() // at most: the rule goes during the Exec
	if _, err := b.Router.Exec(ctx, "nft", "delete", "table", "inet", "nr_policy"); err != nil {
		t.Fatal(err)
	}
	for range n - n/2 {
		select {
		case r := <-results:
			if r.err != nil {
				t.Errorf("ADD of %s: %v", r.pod.Name, r.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the other pods did not return within 5s of their path opening")
		}
	}
	t.Logf("the other pods returned within %v of their opening", time.Since(opened).Round(time.Millisecond))
}

// TestSharedReadOnlyFallsBack: a read-only coordination directory cannot make an ADD fail: each
// netready probes alone, as without coordination, and its log line says why.
func TestSharedReadOnlyFallsBack(t *testing.T) {
	testbed.SkipUnlessRoot(t)
	dir := sharedDir(t)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_RDONLY|syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0700,size=64k"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	ctx := testContext(t)
	b := testbed.New(t, testbed.Options{Plugins: testbed.WithNetready})
	list, logFile := faultList(t, b, "20s", `,"probes":["`+testbed.ProbeDB+`"]`)
	fault, err := b.BlockRouter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pods := newPods(t, b, 3)
	t.Cleanup(func() { delAll(b, list, pods) })
	results := addAll(ctx, b, list, pods)
	waitRunning(t, pods)
	time.Sleep(300 * time.Millisecond)
	opened, err := fault.Unblock()
	if err != nil {
		t.Fatal(err)
	}
	for range pods {
		r := <-results
		if r.err != nil {
			t.Errorf("ADD of %s with a read-only %s: %v", r.pod.Name, dir, r.err)
		} else if d := r.at.Sub(opened); d > 500*time.Millisecond {
			t.Errorf("ADD of %s returned %v after the opening: each should probe alone at the full schedule", r.pod.Name, d)
		}
	}
	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	notes := 0
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var rec struct {
			Verb  string   `json:"verb"`
			Notes []string `json:"notes"`
		}
		if json.Unmarshal(line, &rec) == nil && rec.Verb == "ADD" {
			for _, note := range rec.Notes {
				if strings.Contains(note, "probing alone") && strings.Contains(note, "read-only file system") {
					notes++
				}
			}
		}
	}
	if notes < len(pods) {
		t.Errorf("%d ADD log lines say why they probed alone, want %d:\n%s", notes, len(pods), data)
	}
}
