package podcheck

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/gate"
	"github.com/netready/netready/pkg/podns"

	"github.com/netready/netready/internal/testns"
)

// testPod makes a pod netns whose eth0 (10.99.0.2/24, fd99::2/64) leads to
// a peer netns holding the gateway 10.99.0.1, and removes both at the end.
func testPod(t testing.TB) (pod Pod, podNS, peerNS string) {
	t.Helper()
	podNS, podPath := testns.New(t, "podcheck-pod")
	peerNS, _ = testns.New(t, "podcheck-peer")
	run(t, "ip", "-n", podNS, "link", "add", "eth0", "type", "veth", "peer", "name", "gw0", "netns", peerNS)
	run(t, "ip", "-n", podNS, "addr", "add", "10.99.0.2/24", "dev", "eth0")
	run(t, "ip", "-n", podNS, "addr", "add", "fd99::2/64", "dev", "eth0", "nodad")
	run(t, "ip", "-n", peerNS, "addr", "add", "10.99.0.1/24", "dev", "gw0")
	run(t, "ip", "-n", peerNS, "link", "set", "gw0", "up")
	run(t, "ip", "-n", podNS, "link", "set", "eth0", "up")
	run(t, "ip", "-n", podNS, "route", "add", "default", "via", "10.99.0.1")
	pod = Pod{
		NetNS:    podPath,
		Links:    []Link{{Name: "eth0", Addrs: []netip.Addr{netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("fd99::2")}}},
		Gateways: []netip.Addr{netip.MustParseAddr("10.99.0.1")},
	}
	return pod, podNS, peerNS
}

func run(t testing.TB, args ...string) {
	t.Helper()
	testns.Run(t, args[0], args[1:]...)
}

func spec(t testing.TB, probes ...string) config.Spec {
	t.Helper()
	s := config.Spec{Gateway: true, DefaultRoute: true, Interval: 10 * time.Millisecond, MaxInterval: 40 * time.Millisecond, AttemptTimeout: time.Second}
	for _, u := range probes {
		p, err := config.ParseProbe(u)
		if err != nil {
			t.Fatal(err)
		}
		s.Probes = append(s.Probes, p)
	}
	return s
}

func TestRunReadyPod(t *testing.T) {
	pod, _, _ := testPod(t)
	// Only IPv4 has a default route: the IPv6 condition must be what is unmet.
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	rep, err := Run(ctx, spec(t, "icmp://10.99.0.1", "tcp://10.99.0.1:9?refused=ok"), pod)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range rep.Conditions {
		names = append(names, c.Name)
	}
	want := []string{"link eth0", "address 10.99.0.2 on eth0", "address fd99::2 on eth0", "IPv4 default route",
		"IPv6 default route", "route to 10.99.0.1", "gateway 10.99.0.1", "icmp://10.99.0.1", "tcp://10.99.0.1:9?refused=ok"}
	if !slices.Equal(names, want) {
		t.Errorf("conditions\n %q\nwant\n %q", names, want)
	}
	// The check count depends on how many netlink events the setup caused.
	if got := rep.Summary(); !strings.HasPrefix(got, "IPv6 default route: no IPv6 default route (") || strings.Contains(got, ";") {
		t.Errorf("Summary() = %q, want only the missing IPv6 default route", got)
	}
}

// TestRunSeesALateRoute: local conditions are read again only on a pod
// netlink event, so a gate whose watchers (started after the first round)
// did not reach the pod's netns would never see the route and time out.
func TestRunSeesALateRoute(t *testing.T) {
	pod, podNS, _ := testPod(t)
	pod.Links[0].Addrs = pod.Links[0].Addrs[:1] // IPv4 only
	run(t, "ip", "-n", podNS, "route", "del", "default")
	const late = 300 * time.Millisecond
	go func() {
		time.Sleep(late)
		exec.Command("ip", "-n", podNS, "route", "add", "default", "via", "10.99.0.1").Run()
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	rep, err := Run(ctx, spec(t), pod)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Ready() {
		t.Fatalf("not ready: %s", rep.Summary())
	}
	i := slices.IndexFunc(rep.Conditions, func(s gate.Status) bool { return s.Name == "IPv4 default route" })
	if c := rep.Conditions[i]; c.After < late || c.After > late+time.Second || c.Attempts < 3 {
		t.Errorf("default route ready after %v in %d checks, want soon after %v, checked in the first round, after Watch and on the event", c.After, c.Attempts, late)
	}
}

// TestOnWait: a pod whose network works does not wait, and pays for
// nothing OnWait readies; a pod that waits calls it once.
func TestOnWait(t *testing.T) {
	pod, podNS, _ := testPod(t)
	pod.Links[0].Addrs = pod.Links[0].Addrs[:1] // IPv4 only
	calls := 0
	onWait := OnWait(func() { calls++ })
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	rep, err := Run(ctx, spec(t), pod, onWait)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Ready() || calls != 0 {
		t.Fatalf("ready pod: ready %v (%s), OnWait called %d times, want ready and 0", rep.Ready(), rep.Summary(), calls)
	}

	run(t, "ip", "-n", podNS, "route", "del", "default")
	go func() {
		time.Sleep(200 * time.Millisecond)
		exec.Command("ip", "-n", podNS, "route", "add", "default", "via", "10.99.0.1").Run()
	}()
	rep, err = Run(ctx, spec(t), pod, onWait)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Ready() || calls != 1 {
		t.Fatalf("pod that waited for its route: ready %v (%s), OnWait called %d times, want ready and 1", rep.Ready(), rep.Summary(), calls)
	}
}

func TestRunStopsWhenTheNetNSIsRemoved(t *testing.T) {
	pod, podNS, _ := testPod(t)
	go func() {
		time.Sleep(300 * time.Millisecond)
		exec.Command("ip", "netns", "del", podNS).Run()
	}()
	start := time.Now()
	// Nothing answers on 10.99.0.3: the gate would wait for the whole timeout.
	rep, err := Run(t.Context(), spec(t, "icmp://10.99.0.3"), pod)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(rep.Err, podns.ErrRemoved) {
		t.Fatalf("Err = %v, want %v", rep.Err, podns.ErrRemoved)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("took %v to notice the netns was removed, want well under 2s", took)
	}
}

func TestRunMissingNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: opens network namespaces")
	}
	_, err := Run(t.Context(), spec(t), Pod{NetNS: "/var/run/netns/nrpc-does-not-exist"})
	if err == nil || !strings.Contains(err.Error(), "nrpc-does-not-exist") {
		t.Fatalf("err = %v, want one naming the missing netns", err)
	}
}

// TestRunLeaksNothing runs the gate 1000 times in one process, ready and not
// ready, with Run and with RunThenExit (whose closing goes on after it
// returns), and checks that file descriptors, goroutines and OS threads come
// back to where they were: a long-lived caller (netready check in a loop,
// a future daemon) must not grow, and what RunThenExit leaves to its
// goroutine is closed even when the process lives on.
func TestRunLeaksNothing(t *testing.T) {
	pod, _, _ := testPod(t)
	pod.Links[0].Addrs = pod.Links[0].Addrs[:1] // IPv4 only: ready
	ready := spec(t, "icmp://10.99.0.1", "tcp://10.99.0.1:9?refused=ok")
	blocked := spec(t, "icmp://10.99.0.3", "tcp://10.99.0.3:80") // nobody there
	runs := 1000
	if testing.Short() {
		runs = 100
	}
	// RunThenExit leaves its closing for exitGrace, to a process's exit:
	// shortened here, so that a thousand runs do not pile up 500 netns
	// threads; it still comes after RunThenExit has returned.
	defer func(g time.Duration) { exitGrace = g }(exitGrace)
	exitGrace = 10 * time.Millisecond
	run := func(i int) {
		s, budget := ready, time.Second
		if i%10 == 0 {
			s, budget = blocked, 30*time.Millisecond
		}
		ctx, cancel := context.WithTimeout(t.Context(), budget)
		defer cancel()
		runs := Run
		if i%2 == 1 {
			runs = RunThenExit
		}
		rep, err := runs(ctx, s, pod)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Ready() == (i%10 == 0) {
			t.Fatalf("run %d: ready=%v: %s", i, rep.Ready(), rep.Summary())
		}
	}
	run(1) // warm up: the runtime's own lazily made threads and fds
	fds, goroutines, threads := testns.OpenFDs(t), runtime.NumGoroutine(), countThreads(t)
	for i := range runs {
		run(i)
	}
	// Goroutines that just closed a socket, and RunThenExit's closing, may
	// need a moment to be done.
	deadline := time.Now().Add(2 * time.Second)
	for (runtime.NumGoroutine() > goroutines || testns.OpenFDs(t) > fds) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := testns.OpenFDs(t); got > fds {
		t.Errorf("open fds %d -> %d after %d runs", fds, got, runs)
	}
	if got := runtime.NumGoroutine(); got > goroutines {
		t.Errorf("goroutines %d -> %d after %d runs", goroutines, got, runs)
	}
	// Threads that ns.Do could not switch back are left to die, and the
	// runtime keeps idle ones: allow a few, not one per run.
	if got := countThreads(t); got > threads+4 {
		t.Errorf("OS threads %d -> %d after %d runs", threads, got, runs)
	}
}

func countThreads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads: line in /proc/self/status")
	return 0
}

// BenchmarkRunReady is the ready path of an ADD, in process: open the
// pod's netns, build the conditions, one round of the gate that finds
// them all met.
func BenchmarkRunReady(b *testing.B) {
	pod, _, _ := testPod(b)
	pod.Links[0].Addrs = pod.Links[0].Addrs[:1] // IPv4 only: ready
	s := spec(b, "icmp://10.99.0.1", "tcp://10.99.0.1:9?refused=ok")
	for b.Loop() {
		rep, err := Run(b.Context(), s, pod)
		if err != nil {
			b.Fatal(err)
		}
		if !rep.Ready() {
			b.Fatalf("not ready: %s", rep.Summary())
		}
	}
}

// TestShareSeatsOnlyUnmet: an active condition the first round met (the
// gateway, usually) gets no seat under the coordination directory, and a
// local one none either.
func TestShareSeatsOnlyUnmet(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil { // coord refuses a directory others may read
		t.Fatal(err)
	}
	t.Setenv(RunDirEnv, dir)
	conds := []gate.Condition{
		{Name: "gateway 10.42.0.1", Kind: gate.Active},
		{Name: "link eth0", Kind: gate.Local},
		{Name: "tcp://10.0.0.5:5432", Kind: gate.Active},
	}
	w := share(conds, []bool{false, true, true})
	defer w.Close()
	if len(w.Notes) > 0 {
		t.Fatalf("notes %q: the directory should be usable", w.Notes)
	}
	if w.Peers[0] != nil || w.Peers[1] != nil || w.Peers[2] == nil {
		t.Errorf("peers %v, want one for the unmet active condition only", w.Peers)
	}
	before, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	w2 := share(conds, []bool{true, true, true})
	defer w2.Close()
	after, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) <= len(before) {
		t.Errorf("%d files under the directory with the gateway seated too, %d without: seating it should add its own", len(after), len(before))
	}
}
