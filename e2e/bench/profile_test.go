package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/podcheck"
)

// TestProfileGate runs netready's gate (podcheck.Run, what ADD runs) in this process, from the node
// netns, against a pod whose path to the db the router drops, for $BENCH_PROFILE_FOR; the probe is
// $BENCH_PROFILE_PROBE (default the db's tcp port). With -cpuprofile it shows where a waiting gate
// spends its CPU; it logs the CPU time per second waited (getrusage of the whole test process, so
// a little more than the gate's). Skipped unless BENCH_PROFILE_FOR is set:
//
//	BENCH_PROFILE_FOR=10s go test ./e2e/bench -run TestProfileGate -v -cpuprofile /tmp/gate.pprof
//	go tool pprof -top /tmp/gate.pprof
func TestProfileGate(t *testing.T) {
	wait, err := time.ParseDuration(os.Getenv("BENCH_PROFILE_FOR"))
	if err != nil {
		t.Skip("set BENCH_PROFILE_FOR (a duration) to profile a waiting gate")
	}
	probe := os.Getenv("BENCH_PROFILE_PROBE")
	if probe == "" {
		probe = testbed.ProbeDB
	}
	b := testbed.New(t)
	ctx := context.Background()
	list, err := b.ConfList(testbed.K3sConflist("1.0.0"))
	if err != nil {
		t.Fatal(err)
	}
	pod, err := b.NewPod(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res, err := b.Add(ctx, list, pod)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Del(context.Background(), list, pod) })
	addr, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
	if _, err := b.BlockRouter(ctx); err != nil {
		t.Fatal(err)
	}

	conf, err := config.Parse(fmt.Appendf(nil, `{"type":"netready","probes":[%q],"timeout":"110s"}`, probe))
	if err != nil {
		t.Fatal(err)
	}
	spec, err := conf.Resolve(config.Pod{Namespace: "default", Name: pod.Name})
	if err != nil {
		t.Fatal(err)
	}
	target := podcheck.Pod{
		NetNS:    pod.Path,
		Links:    []podcheck.Link{{Name: pod.IfName, Addrs: []netip.Addr{addr.Unmap()}}},
		Gateways: []netip.Addr{testbed.PodGateway},
	}

	before := cpuTime(t)
	start := time.Now()
	gctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	err = b.Node.Do(func() error {
		rep, err := podcheck.Run(gctx, spec, target)
		if err == nil && rep.Ready() {
			err = fmt.Errorf("the gate says ready while the router drops the path: %s", rep.Summary())
		}
		if err == nil {
			t.Logf("unmet after %v: %s", rep.Waited.Round(time.Millisecond), rep.Summary())
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("CPU %.2f ms per second waited (%v CPU in %v)", float64((cpuTime(t)-before).Microseconds())/1000/took.Seconds(),
		cpuTime(t)-before, took.Round(time.Millisecond))
}

func cpuTime(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
