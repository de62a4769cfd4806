package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/internal/logrec"
)

// The tests in this file run K3s's chain with netready last, loaded through libcni as containerd
// does, in simulated nodes (testbed). Timing bounds are generous, as the machine may be busy with
// other beds; the real figures are logged.

// TestNetreadyReadyAtOnce: with the network already up, ADD succeeds quickly and its result is the
// chain's own, in the list's cniVersion: the same shape as the same chain's result without
// netready, and what the pod's netns really holds.
func TestNetreadyReadyAtOnce(t *testing.T) {
	for _, cniVersion := range []string{"0.3.1", "1.0.0", "1.1.0"} {
		t.Run(cniVersion, func(t *testing.T) {
			t.Parallel()
			rootForward := readRootForward(t)
			ctx := testContext(t)
			b := netreadyBed(t, false)
			logFile := filepath.Join(t.TempDir(), "netready.log")

			plain := confList(t, b, testbed.K3sConflist(cniVersion))
			ref := newPod(t, b)
			start := time.Now()
			refRaw, err := b.AddRaw(ctx, plain, ref)
			if err != nil {
				t.Fatalf("ADD without netready: %v", err)
			}
			plainTook := time.Since(start)

			gated := confList(t, b, testbed.K3sConflist(cniVersion, netreadyPlugin(map[string]any{
				"probes":  []string{testbed.ProbeDB},
				"logFile": logFile,
			})))
			pod := newPod(t, b)
			start = time.Now()
			raw, err := b.AddRaw(ctx, gated, pod)
			took := time.Since(start)
			if err != nil {
				t.Fatalf("ADD with netready: %v", err)
			}
			rec := lastRecord(t, logFile, "ADD")
			t.Logf("ADD took %v with netready (netready itself %.2fms), %v without", took, rec.TotalMS, plainTook)
			if took > 2*time.Second {
				t.Errorf("ADD with the network up took %v, want well under 2s", took)
			}
			if rec.Outcome != logrec.Ready {
				t.Errorf("log outcome %q, want ready", rec.Outcome)
			}

			if raw.Version() != cniVersion || refRaw.Version() != cniVersion {
				t.Errorf("result cniVersion %q with netready, %q without; want the list's %q", raw.Version(), refRaw.Version(), cniVersion)
			}
			res, refRes := toCurrent(t, raw), toCurrent(t, refRaw)
			if got, want := shapeOf(res, pod), shapeOf(refRes, ref); !reflect.DeepEqual(got, want) {
				t.Errorf("result with netready differs from the chain's without it beyond names, MACs and addresses:\n got %+v\nwant %+v", got, want)
			}
			checkResultIsPods(t, res, pod)
			assertRootUntouched(t, rootForward)
		})
	}
}

// TestNetreadyWaitsForPath: one part of the path is closed when ADD starts and opens at a set
// time; ADD returns after the opening, not before, and soon after it: within milliseconds for a
// change on the node (netready wakes on the node's netlink and nftables events), within its retry
// schedule for a change beyond the node.
func TestNetreadyWaitsForPath(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after time.Duration // when the path opens, counted from the start of ADD
		bound time.Duration // ADD must return within this of the opening (generous)
		cond  string        // the condition that waits
		block func(ctx context.Context, t *testing.T, b *testbed.Bed) func(at time.Time) <-chan testbed.Opened
	}{
		{"gateway not answering", 300 * time.Millisecond, time.Second, "gateway " + testbed.PodGateway.String(),
			func(ctx context.Context, t *testing.T, b *testbed.Bed) func(time.Time) <-chan testbed.Opened {
				return blockGateway(ctx, t, b)
			}},
		{"blackhole route on node", 400 * time.Millisecond, 500 * time.Millisecond, testbed.ProbeDB,
			func(ctx context.Context, t *testing.T, b *testbed.Bed) func(time.Time) <-chan testbed.Opened {
				return fault(t)(b.BlackholeNode(ctx)).OpenAt
			}},
		{"prohibit route on node", 400 * time.Millisecond, 500 * time.Millisecond, testbed.ProbeDB,
			func(ctx context.Context, t *testing.T, b *testbed.Bed) func(time.Time) <-chan testbed.Opened {
				return fault(t)(b.ProhibitNode(ctx)).OpenAt
			}},
		{"nft drop in router", 500 * time.Millisecond, time.Second, testbed.ProbeDB,
			func(ctx context.Context, t *testing.T, b *testbed.Bed) func(time.Time) <-chan testbed.Opened {
				return fault(t)(b.BlockRouter(ctx)).OpenAt
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			b := netreadyBed(t, false)
			list, logFile := netreadyList(t, b, map[string]any{
				"probes":  []string{testbed.ProbeDB},
				"timeout": "10s",
			})
			pod := newPod(t, b)
			openAt := tc.block(ctx, t, b)

			// The path opens tc.after after netready itself started, not the
			// chain: under load the plugins before it can take longer than
			// tc.after, and netready would then find the path open at once.
			started := netreadyStarted(ctx, pod.ContainerID)
			lifts := make(chan (<-chan testbed.Opened), 1)
			go func() {
				if s, ok := <-started; ok {
					lifts <- openAt(s.Add(tc.after))
				}
				close(lifts)
			}()
			start := time.Now()
			_, err := b.Add(ctx, list, pod)
			end := time.Now()
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			opened, ok := <-lifts
			if !ok {
				t.Fatal("netready's ADD returned before the test saw it running")
			}
			o, ok := <-opened
			if !ok || o.Err != nil {
				t.Fatalf("lifting the fault: %v", o.Err)
			}
			t.Logf("ADD returned %v after the start, %v after the lift was requested, %v after the path opened (lift requested %v after the time asked)",
				end.Sub(start), end.Sub(o.Requested), end.Sub(o.At), o.Requested.Sub(start.Add(tc.after)))
			if !end.After(o.Requested) {
				t.Errorf("ADD returned %v before the lift was requested", o.Requested.Sub(end))
			}
			if d := end.Sub(o.Requested); d > tc.bound {
				t.Errorf("ADD returned %v after the lift was requested, want within %v", d, tc.bound)
			}

			// The condition really waited: it failed at first and held once the path opened.
			c := lastRecord(t, logFile, "ADD").condition(t, tc.cond)
			t.Logf("%s: ready after %.2fms, %d attempts", c.Name, c.AfterMS, c.Attempts)
			if !c.Ready || c.Attempts < 2 {
				t.Errorf("log: %s ready=%v after %d attempts; want ready after several", c.Name, c.Ready, c.Attempts)
			}
		})
	}
}

// TestNetreadyTimeout: a path that never opens fails ADD after the timeout with CNI error 11 (try
// again later), naming the unmet condition and its attempts; the runtime's DEL then succeeds.
func TestNetreadyTimeout(t *testing.T) {
	for _, tc := range []struct {
		name  string
		block func(ctx context.Context, t *testing.T, b *testbed.Bed)
		want  string // in the error message
	}{
		{"gateway never answers", func(ctx context.Context, t *testing.T, b *testbed.Bed) { blockGateway(ctx, t, b) },
			"gateway " + testbed.PodGateway.String()},
		{"nft drop in router", func(ctx context.Context, t *testing.T, b *testbed.Bed) { fault(t)(b.BlockRouter(ctx)) },
			testbed.ProbeDB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			b := netreadyBed(t, false)
			list := confList(t, b, testbed.K3sConflist("1.0.0", netreadyPlugin(map[string]any{
				"probes":  []string{testbed.ProbeDB},
				"timeout": "1s",
			})))
			pod := newPod(t, b)
			tc.block(ctx, t, b)

			e, took := addTryAgain(ctx, t, b, list, pod, "a path that never opens")
			if !strings.Contains(e.Msg, tc.want) || !strings.Contains(e.Msg, "attempts") {
				t.Errorf("ADD error %q, want it to name %q and its attempts", e.Msg, tc.want)
			}
			if took < 900*time.Millisecond || took >= 3*time.Second {
				t.Errorf("ADD took %v, want about the 1s timeout", took)
			}
			// containerd runs DEL after a failed ADD.
			if err := b.Del(ctx, list, pod); err != nil {
				t.Errorf("DEL after the failed ADD: %v", err)
			}
		})
	}
}

// TestNetreadyOnTimeoutAllow: with onTimeout allow, a path that never opens lets ADD succeed after
// the timeout with the chain's result, and the log warns.
func TestNetreadyOnTimeoutAllow(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := netreadyBed(t, false)
	list, logFile := netreadyList(t, b, map[string]any{
		"probes":    []string{testbed.ProbeDB},
		"timeout":   "500ms",
		"onTimeout": "allow",
	})
	pod := newPod(t, b)
	fault(t)(b.BlockRouter(ctx))

	start := time.Now()
	res, err := b.Add(ctx, list, pod)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("ADD with onTimeout allow: %v", err)
	}
	t.Logf("ADD took %v", took)
	if took < 400*time.Millisecond || took >= 2500*time.Millisecond {
		t.Errorf("ADD took %v, want about the 500ms timeout", took)
	}
	checkResultIsPods(t, res, pod)

	rec := lastRecord(t, logFile, "ADD")
	if rec.Level != logrec.LevelWarn || rec.Outcome != logrec.TimeoutAllowed {
		t.Errorf("log: level %q outcome %q, want WARN timeout-allowed", rec.Level, rec.Outcome)
	}
	if c := rec.condition(t, testbed.ProbeDB); c.Ready || c.Error == "" {
		t.Errorf("log: %s ready=%v error %q, want unmet with its last error", c.Name, c.Ready, c.Error)
	}
}

// TestNetreadyIPv6 runs a dual-stack pod: netready gates on its IPv6 address (which must have
// left the tentative state of duplicate address detection) and on an IPv6 target.
func TestNetreadyIPv6(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := netreadyBed(t, true)
	probe6 := "tcp://" + testbed.DBTCP6.String()
	gatedConf := func(logFile string) string {
		return netreadyPlugin(map[string]any{"probes": []string{probe6}, "timeout": "10s", "logFile": logFile})
	}

	t.Run("chain with netready", func(t *testing.T) {
		logFile := filepath.Join(t.TempDir(), "netready.log")
		list := confList(t, b, testbed.K3sConflist("1.0.0", gatedConf(logFile)))
		pod := newPod(t, b)
		start := time.Now()
		res, err := b.Add(ctx, list, pod)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		t.Logf("ADD took %v", time.Since(start))
		addr6 := podAddr(t, res, true).Addr()
		if out := addrShow6(t, pod); isTentative(out, addr6) {
			t.Errorf("right after ADD, %s is tentative:\n%s", addr6, out)
		}
		// In a new bed the node's first IPv6 packets to the router wait about a second for
		// neighbour discovery, so this ADD takes about that long: the log shows the probe waiting.
		rec := lastRecord(t, logFile, "ADD")
		t.Logf("log: %s", rec.raw)
		for _, name := range []string{
			"address " + addr6.String() + " on eth0", "IPv6 default route",
			"gateway " + testbed.PodGateway6.String(), "route to " + testbed.DBAddr6.String(), probe6,
		} {
			if c := rec.condition(t, name); !c.Ready {
				t.Errorf("log: %s not ready: %s", name, c.Error)
			}
		}
		if err := connect(ctx, pod, testbed.DBTCP6, time.Second); err != nil {
			t.Errorf("pod -> %s after ADD: %v", testbed.DBTCP6, err)
		}
	})

	// What the chain alone leaves: the bridge plugin (unless "enableDad") turns DAD off on the
	// pod's interface, and with DAD on it waits for it (ip.SettleAddresses) before returning. So
	// with K3s's chain the address should not be tentative after ADD; this is logged, not asserted.
	t.Run("plain chain", func(t *testing.T) {
		pod := newPod(t, b)
		res, err := b.Add(ctx, confList(t, b, testbed.K3sConflist("1.0.0")), pod)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		addr6 := podAddr(t, res, true).Addr()
		out := addrShow6(t, pod)
		dad, err := pod.Exec(ctx, "sysctl", "-n", "net.ipv6.conf.eth0.accept_dad")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("without netready, right after ADD: %s tentative=%v, eth0 accept_dad=%s\n%s",
			addr6, isTentative(out, addr6), bytes.TrimSpace(dad), out)
	})

	// DAD still running when netready starts: the chain's result is handed to netready exactly as
	// libcni hands it to the list's last plugin, after the pod's address was re-added with DAD on.
	// netready must return only once DAD is over, and the IPv6 probe must then succeed.
	t.Run("DAD in progress", func(t *testing.T) {
		logFile := filepath.Join(t.TempDir(), "netready.log")
		gated := confList(t, b, testbed.K3sConflist("1.0.0", gatedConf(logFile)))
		pod := newPod(t, b)
		res, err := b.Add(ctx, confList(t, b, testbed.K3sConflist("1.0.0")), pod)
		if err != nil {
			t.Fatalf("ADD of the chain without netready: %v", err)
		}
		addr6 := podAddr(t, res, true)
		if err := pod.Sysctl("net/ipv6/conf/eth0/accept_dad", "1"); err != nil {
			t.Fatal(err)
		}
		for _, op := range []string{"del", "add"} {
			if _, err := pod.IP(ctx, "addr", op, addr6.String(), "dev", "eth0"); err != nil {
				t.Fatal(err)
			}
		}
		if out := addrShow6(t, pod); !isTentative(out, addr6.Addr()) {
			t.Fatalf("re-added %s with DAD on, but it is not tentative:\n%s", addr6, out)
		}

		start := time.Now()
		_, err = execLastPlugin(ctx, b, gated, pod, res)
		took := time.Since(start)
		out := addrShow6(t, pod)
		if err != nil {
			t.Fatalf("netready ADD: %v", err)
		}
		t.Logf("netready ADD took %v", took)
		if isTentative(out, addr6.Addr()) {
			t.Errorf("netready returned while %s was tentative:\n%s", addr6.Addr(), out)
		}
		rec := lastRecord(t, logFile, "ADD")
		c := rec.condition(t, "address "+addr6.Addr().String()+" on eth0")
		t.Logf("%s: ready after %.2fms, %d checks", c.Name, c.AfterMS, c.Attempts)
		if !c.Ready || c.AfterMS <= 0 || c.Attempts < 2 {
			t.Errorf("log: %s ready=%v after %.2fms and %d checks; want ready only after DAD", c.Name, c.Ready, c.AfterMS, c.Attempts)
		}
		p := rec.condition(t, probe6)
		t.Logf("%s: ready after %.2fms, %d attempts", p.Name, p.AfterMS, p.Attempts)
		if !p.Ready {
			t.Errorf("log: %s not ready: %s", p.Name, p.Error)
		}
	})
}

// TestNetreadyCheck: CHECK succeeds on a pod whose network works and fails with code 11 within the
// CHECK budget (2s) once the path breaks.
func TestNetreadyCheck(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := netreadyBed(t, false)
	list := confList(t, b, testbed.K3sConflist("1.0.0", netreadyPlugin(map[string]any{"probes": []string{testbed.ProbeDB}})))
	pod := newPod(t, b)
	if _, err := b.Add(ctx, list, pod); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	start := time.Now()
	if err := b.Check(ctx, list, pod); err != nil {
		t.Errorf("CHECK on a ready pod: %v", err)
	}
	t.Logf("CHECK on a ready pod took %v", time.Since(start))

	f := fault(t)(b.BlockRouter(ctx))
	start = time.Now()
	err := b.Check(ctx, list, pod)
	took := time.Since(start)
	t.Logf("CHECK through the nft block took %v: %v", took, err)
	var e *types.Error
	switch {
	case err == nil:
		t.Errorf("CHECK through the nft block succeeded")
	case !errors.As(err, &e) || e.Code != types.ErrTryAgainLater:
		t.Errorf("CHECK error %v, want code %d", err, types.ErrTryAgainLater)
	case !strings.Contains(e.Msg, testbed.ProbeDB):
		t.Errorf("CHECK error %q, want it to name %s", e.Msg, testbed.ProbeDB)
	}
	if took < 1500*time.Millisecond || took >= 3500*time.Millisecond {
		t.Errorf("CHECK took %v, want about the 2s CHECK budget", took)
	}

	if _, err := f.Unblock(); err != nil {
		t.Fatal(err)
	}
	if err := b.Check(ctx, list, pod); err != nil {
		t.Errorf("CHECK after the path opened again: %v", err)
	}
}

// TestNetreadyDel: DEL succeeds without a netns and without a prevResult, whether the runtime
// calls netready alone or the whole list.
func TestNetreadyDel(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := netreadyBed(t, false)
	logFile := filepath.Join(t.TempDir(), "netready.log")

	t.Run("binary without netns or prevResult", func(t *testing.T) {
		id := "0123456789abcdef0123456789abcdef"
		r, err := b.ExecNetready(ctx, map[string]string{
			"CNI_COMMAND": "DEL", "CNI_CONTAINERID": id, "CNI_IFNAME": "eth0", "CNI_PATH": b.BinDir,
		}, []byte(`{"cniVersion":"1.0.0","name":"cbr0","type":"netready","logFile":`+quote(logFile)+`}`), nil)
		stdout := r.Stdout
		if err != nil || r.Exit != 0 {
			t.Fatalf("DEL: %v, exit %d\nstdout %s\nstderr %s", err, r.Exit, stdout, r.Stderr)
		}
		if len(stdout) != 0 {
			t.Errorf("DEL printed %q, want nothing", stdout)
		}
		rec := lastRecord(t, logFile, "DEL")
		if rec.Container != id || rec.Outcome != logrec.OK {
			t.Errorf("log: container %q outcome %q, want %s ok", rec.Container, rec.Outcome, id)
		}
	})

	list := confList(t, b, testbed.K3sConflist("1.0.0", netreadyPlugin(map[string]any{"probes": []string{testbed.ProbeDB}})))
	t.Run("list with no netns", func(t *testing.T) {
		pod := newPod(t, b)
		if _, err := b.Add(ctx, list, pod); err != nil {
			t.Fatalf("ADD: %v", err)
		}
		rt := pod.RuntimeConf()
		rt.NetNS = ""
		if err := b.Node.Do(func() error { return b.CNI().DelNetworkList(ctx, list, rt) }); err != nil {
			t.Errorf("DEL with no netns: %v", err)
		}
	})
	t.Run("list after the netns was removed", func(t *testing.T) {
		pod := newPod(t, b)
		if _, err := b.Add(ctx, list, pod); err != nil {
			t.Fatalf("ADD: %v", err)
		}
		if err := pod.Remove(); err != nil {
			t.Fatal(err)
		}
		if err := b.Del(ctx, list, pod); err != nil {
			t.Errorf("DEL after the netns was removed: %v", err)
		}
		assertGone(t, filepath.Join(b.FlannelDir, pod.ContainerID))
	})
}

// TestNetreadyVersionStatusGC: the versions netready speaks, and STATUS and GC through libcni.
func TestNetreadyVersionStatusGC(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := netreadyBed(t, false)

	t.Run("VERSION", func(t *testing.T) {
		r, err := b.ExecNetready(ctx, map[string]string{"CNI_COMMAND": "VERSION"}, nil, nil)
		stdout := r.Stdout
		if err != nil || r.Exit != 0 {
			t.Fatalf("VERSION: %v, exit %d\nstderr %s", err, r.Exit, r.Stderr)
		}
		var info struct {
			CNIVersion        string   `json:"cniVersion"`
			SupportedVersions []string `json:"supportedVersions"`
		}
		if err := json.Unmarshal(stdout, &info); err != nil {
			t.Fatalf("VERSION printed %q: %v", stdout, err)
		}
		if want := []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}; !slices.Equal(info.SupportedVersions, want) {
			t.Errorf("supportedVersions %v, want %v", info.SupportedVersions, want)
		}
	})

	t.Run("STATUS and GC", func(t *testing.T) {
		logFile := filepath.Join(t.TempDir(), "netready.log")
		list := confList(t, b, testbed.K3sConflist("1.1.0", netreadyPlugin(map[string]any{"probes": []string{testbed.ProbeDB}, "logFile": logFile})))
		if err := b.Status(ctx, list); err != nil {
			t.Errorf("STATUS: %v", err)
		}
		pod, orphan := newPod(t, b), newPod(t, b)
		for _, p := range []*testbed.Pod{pod, orphan} {
			if _, err := b.Add(ctx, list, p); err != nil {
				t.Fatalf("ADD %s: %v", p.Name, err)
			}
		}
		// libcni DELs the orphan through the whole list, then sends GC to every plugin.
		if err := b.GC(ctx, list, pod); err != nil {
			t.Errorf("GC: %v", err)
		}
		if hasLink(t, orphan, "eth0") {
			t.Errorf("GC left the orphan's eth0 in place")
		}
		if !hasLink(t, pod, "eth0") {
			t.Errorf("GC removed the kept pod's eth0")
		}
		// containerd calls STATUS every 5 s: a STATUS or GC that succeeds leaves no line.
		var verbs []string
		for _, r := range readLog(t, logFile) {
			verbs = append(verbs, r.Verb)
		}
		if want := []string{"ADD", "ADD", "DEL"}; !slices.Equal(verbs, want) {
			t.Errorf("log records for %v, want %v (the ADDs and the orphan's DEL; nothing for STATUS and GC)", verbs, want)
		}
	})

	t.Run("STATUS with an invalid config", func(t *testing.T) {
		logFile := filepath.Join(t.TempDir(), "netready.log")
		list := confList(t, b, testbed.K3sConflist("1.1.0", netreadyPlugin(map[string]any{"probes": []string{"tcp://db.local:5432"}, "logFile": logFile})))
		err := b.Status(ctx, list)
		var e *types.Error
		switch {
		case err == nil:
			t.Errorf("STATUS with a host name in probes succeeded")
		case !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig:
			t.Errorf("STATUS error %v, want code %d", err, types.ErrInvalidNetworkConfig)
		case !strings.Contains(e.Msg, "probes[0]") || !strings.Contains(e.Msg, "db.local"):
			t.Errorf("STATUS error %q, want it to name probes[0] and db.local", e.Msg)
		default:
			t.Logf("STATUS: %v", e.Msg)
		}
		// A failed STATUS leaves its line, in the logFile of the config it rejected.
		recs := readLog(t, logFile)
		if len(recs) != 1 || recs[0].Verb != "STATUS" || recs[0].Outcome != logrec.Error || recs[0].Code != types.ErrInvalidNetworkConfig {
			t.Errorf("log %v, want one STATUS record with outcome error and code 7", recs)
		}
	})
}

// TestNetreadyLog: one JSON line per invocation, naming the verb, the sandbox, the pod, the
// outcome and the time taken, and for ADD and CHECK every condition.
func TestNetreadyLog(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := netreadyBed(t, false)
	list, logFile := netreadyList(t, b, map[string]any{
		"probes": []string{testbed.ProbeDB},
	})
	pod := newPod(t, b)
	res, err := b.Add(ctx, list, pod)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	addr := podAddr(t, res, false).Addr()
	if err := b.Check(ctx, list, pod); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := b.Del(ctx, list, pod); err != nil {
		t.Fatalf("DEL: %v", err)
	}

	recs := readLog(t, logFile)
	var verbs []string
	for _, r := range recs {
		verbs = append(verbs, r.Verb)
	}
	if want := []string{"ADD", "CHECK", "DEL"}; !slices.Equal(verbs, want) {
		t.Fatalf("log records for %v, want one each for %v", verbs, want)
	}
	wantConds := []string{
		"link eth0", "address " + addr.String() + " on eth0", "IPv4 default route",
		"gateway " + testbed.PodGateway.String(), "route to " + testbed.DBAddr.String(), testbed.ProbeDB,
	}
	slices.Sort(wantConds)
	for _, r := range recs {
		t.Logf("%s: %s", r.Verb, r.raw)
		wantOutcome := map[string]logrec.Outcome{"ADD": logrec.Ready, "CHECK": logrec.Ready, "DEL": logrec.OK}[r.Verb]
		if r.Container != pod.ContainerID || r.Outcome != wantOutcome || r.TotalMS <= 0 {
			t.Errorf("%s record: container %q outcome %q total_ms %v; want %s, %s, > 0",
				r.Verb, r.Container, r.Outcome, r.TotalMS, pod.ContainerID, wantOutcome)
		}
		// The runtime names the pod in CNI_ARGS for every verb, DEL included: an operator
		// following a pod through the log needs it on each record (DESIGN.md: "One log record
		// per invocation: verb, container id, pod, ...").
		if r.Pod != "default/"+pod.Name {
			t.Errorf("%s record: pod %q, want default/%s", r.Verb, r.Pod, pod.Name)
		}
		if r.Verb == "DEL" {
			continue
		}
		var names []string
		for _, c := range r.Conditions {
			names = append(names, c.Name)
			if !c.Ready || c.Attempts < 1 {
				t.Errorf("%s record: %s ready=%v attempts %d", r.Verb, c.Name, c.Ready, c.Attempts)
			}
		}
		slices.Sort(names) // the order is netready's to choose
		if !slices.Equal(names, wantConds) {
			t.Errorf("%s record: conditions %q, want %q", r.Verb, names, wantConds)
		}
	}
}

// netreadyBed is a bed whose bin dir holds netready too.
func netreadyBed(t *testing.T, dualStack bool) *testbed.Bed {
	t.Helper()
	return testbed.New(t, testbed.Options{Plugins: testbed.WithNetready, DualStack: dualStack})
}

// netreadyList is K3s's chain (1.0.0) with netready last, its fields set and its log in a file of
// the test's, whose path it returns too.
func netreadyList(t *testing.T, b *testbed.Bed, fields map[string]any) (*libcni.NetworkConfigList, string) {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "netready.log")
	f := maps.Clone(fields)
	f["logFile"] = logFile
	return confList(t, b, testbed.K3sConflist("1.0.0", netreadyPlugin(f))), logFile
}

// netreadyPlugin is netready's object for the conflist, as conflist/ has it, with fields set.
func netreadyPlugin(fields map[string]any) string {
	obj := map[string]any{
		"type":         "netready",
		"capabilities": map[string]bool{"io.kubernetes.cri.pod-annotations": true},
	}
	maps.Copy(obj, fields)
	b, err := json.Marshal(obj)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// fault fails the test on a fault's setup error; use as fault(t)(b.BlockRouter(ctx)).
func fault(t *testing.T) func(*testbed.Fault, error) *testbed.Fault {
	return func(f *testbed.Fault, err error) *testbed.Fault {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
}

// gatewayTable holds the rule that keeps the pod's gateway (cni0, in the node) from answering ICMP
// echo. It goes in before ADD, when cni0 does not exist yet, so it matches on addresses only.
const gatewayTable = "netready_e2e_gateway"

// blockGateway drops ICMP echo requests from the pod subnet to the gateway in the node netns and
// returns a function that lifts the block at a given time, in the background, as Fault.OpenAt
// does. Requested is when the lift began and At when nft exited, so the path opened in between.
func blockGateway(ctx context.Context, t *testing.T, b *testbed.Bed) func(at time.Time) <-chan testbed.Opened {
	t.Helper()
	script := "table inet " + gatewayTable + " {\n" +
		"\tchain input {\n" +
		"\t\ttype filter hook input priority filter; policy accept;\n" +
		"\t\tip saddr " + testbed.PodCIDR.String() + " ip daddr " + testbed.PodGateway.String() + " icmp type echo-request drop\n" +
		"\t}\n}\n"
	if _, err := b.Node.ExecInput(ctx, script, "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	return func(at time.Time) <-chan testbed.Opened {
		ch := make(chan testbed.Opened, 1)
		done := make(chan struct{})
		t.Cleanup(func() { <-done }) // before the bed's Close, which was registered earlier
		go func() {
			defer close(done)
			timer := time.NewTimer(time.Until(at))
			defer timer.Stop()
			select {
			case <-timer.C:
			case <-ctx.Done():
				close(ch)
				return
			}
			o := testbed.Opened{Requested: time.Now()}
			_, o.Err = b.Node.Exec(ctx, "nft", "delete", "table", "inet", gatewayTable)
			o.At = time.Now()
			ch <- o
			close(ch)
		}()
		return ch
	}
}

// execLastPlugin runs ADD of the list's last plugin alone, with prev as its prevResult, as libcni
// runs it at the end of AddNetworkList: the same injected name, cniVersion, prevResult and
// runtimeConfig, the same environment, from the node netns.
func execLastPlugin(ctx context.Context, b *testbed.Bed, list *libcni.NetworkConfigList, p *testbed.Pod, prev types.Result) (types.Result, error) {
	rt := p.RuntimeConf()
	last := list.Plugins[len(list.Plugins)-1]
	inject := map[string]any{"name": list.Name, "cniVersion": list.CNIVersion, "prevResult": prev}
	runtimeConfig := map[string]any{}
	for capability, on := range last.Network.Capabilities {
		if v, ok := rt.CapabilityArgs[capability]; on && ok {
			runtimeConfig[capability] = v
		}
	}
	if len(runtimeConfig) > 0 {
		inject["runtimeConfig"] = runtimeConfig
	}
	conf, err := libcni.InjectConf(last, inject)
	if err != nil {
		return nil, err
	}
	args := &invoke.Args{Command: "ADD", ContainerID: rt.ContainerID, NetNS: rt.NetNS, IfName: rt.IfName, PluginArgs: rt.Args, Path: b.BinDir}
	runner := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	var res types.Result
	err = b.Node.Do(func() error {
		var err error
		res, err = invoke.ExecPluginWithResult(ctx, filepath.Join(b.BinDir, last.Network.Type), conf.Bytes, args, runner)
		return err
	})
	return res, err
}

func toCurrent(t *testing.T, r types.Result) *current.Result {
	t.Helper()
	res, err := current.NewResultFromResult(r)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// resultShape is a result without what differs between two pods of one node: interface names
// (the host veth's is random), MACs and addresses.
type resultShape struct {
	Interfaces []ifaceShape
	IPs        []ipShape
	Routes     []string
	DNS        types.DNS
}

type ifaceShape struct {
	InPod  bool // Sandbox is the pod's netns
	HasMAC bool
}

type ipShape struct {
	Prefix    string // the subnet the address is in
	Gateway   string
	Interface int
}

func shapeOf(res *current.Result, pod *testbed.Pod) resultShape {
	var s resultShape
	for _, i := range res.Interfaces {
		s.Interfaces = append(s.Interfaces, ifaceShape{InPod: i.Sandbox == pod.Path, HasMAC: i.Mac != ""})
	}
	for _, ip := range res.IPs {
		sh := ipShape{Prefix: ip.Address.String(), Gateway: ip.Gateway.String(), Interface: -1}
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
			ones, _ := ip.Address.Mask.Size()
			sh.Prefix = netip.PrefixFrom(a.Unmap(), ones).Masked().String()
		}
		if ip.Interface != nil {
			sh.Interface = *ip.Interface
		}
		s.IPs = append(s.IPs, sh)
	}
	for _, r := range res.Routes {
		s.Routes = append(s.Routes, r.String())
	}
	s.DNS = res.DNS
	return s
}

// checkResultIsPods: the result describes the pod as its netns really is: eth0 with its MAC, its
// address and the gateway cni0.
func checkResultIsPods(t *testing.T, res *current.Result, pod *testbed.Pod) {
	t.Helper()
	sandbox := -1
	for i, iface := range res.Interfaces {
		if iface.Sandbox == pod.Path {
			sandbox = i
		}
	}
	if sandbox < 0 {
		t.Fatalf("no interface in %s in the result: %v", pod.Path, res)
	}
	iface := res.Interfaces[sandbox]
	h, err := pod.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Delete()
	link, err := h.LinkByName(pod.IfName)
	if err != nil {
		t.Fatal(err)
	}
	if iface.Name != pod.IfName || iface.Mac != link.Attrs().HardwareAddr.String() {
		t.Errorf("result's pod interface %s %s, the pod has %s %s", iface.Name, iface.Mac, pod.IfName, link.Attrs().HardwareAddr)
	}
	addr := podAddr(t, res, false)
	checkPodNetns(t, pod, addr.Addr())
	for _, ip := range res.IPs {
		if ip.Interface == nil || *ip.Interface != sandbox {
			t.Errorf("result address %s is on interface %v, want %d (%s)", ip.Address.String(), ip.Interface, sandbox, pod.IfName)
		}
	}
}

func addrShow6(t *testing.T, pod *testbed.Pod) string {
	t.Helper()
	out, err := pod.IP(t.Context(), "-6", "addr", "show", "dev", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// isTentative reports whether `ip addr show` output lists addr as tentative (DAD in progress).
func isTentative(ipAddrShow string, addr netip.Addr) bool {
	for line := range strings.Lines(ipAddrShow) {
		if strings.Contains(line, " "+addr.String()+"/") {
			return strings.Contains(line, "tentative")
		}
	}
	return false
}

// logLine is one record of netready's log, with the line as written, for messages.
type logLine struct {
	logrec.Record
	raw string
}

// readLog parses netready's log file: every line must be one record.
func readLog(t *testing.T, path string) []logLine {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("netready's log: %v", err)
	}
	var recs []logLine
	for line := range strings.Lines(string(b)) {
		r, err := logrec.Parse([]byte(line))
		if err != nil {
			t.Fatalf("netready's log %s: %v", path, err)
		}
		recs = append(recs, logLine{r, strings.TrimSpace(line)})
	}
	return recs
}

// lastRecord is the log's last record for verb.
func lastRecord(t *testing.T, path, verb string) logLine {
	t.Helper()
	recs := readLog(t, path)
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].Verb == verb {
			return recs[i]
		}
	}
	t.Fatalf("netready's log has no %s record (%d records)", verb, len(recs))
	return logLine{}
}

// condition is the record's condition of that name.
func (r logLine) condition(t *testing.T, name string) logrec.Condition {
	t.Helper()
	c, ok := r.Condition(name)
	if !ok {
		t.Fatalf("%s record has no condition %q: %s", r.Verb, name, r.raw)
	}
	return c
}

// netreadyStarted sends the time it first sees netready running ADD for the
// sandbox containerID (a process named netready whose environment holds that
// CNI_CONTAINERID), polling /proc every millisecond; it closes the channel
// unsent when ctx ends first.
func netreadyStarted(ctx context.Context, containerID string) <-chan time.Time {
	c := make(chan time.Time, 1)
	want := []byte("CNI_CONTAINERID=" + containerID + "\x00")
	go func() {
		defer close(c)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			pids, _ := filepath.Glob("/proc/[0-9]*")
			for _, p := range pids {
				if comm, err := os.ReadFile(p + "/comm"); err != nil || string(comm) != "netready\n" {
					continue
				}
				if env, err := os.ReadFile(p + "/environ"); err == nil && bytes.Contains(env, want) && bytes.Contains(env, []byte("CNI_COMMAND=ADD\x00")) {
					c <- time.Now()
					return
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return c
}
