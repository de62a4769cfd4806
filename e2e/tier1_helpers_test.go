package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/internal/logrec"
)

// Helpers of the Tier 1 tests (tier1_test.go, vxlan_test.go, annotations_test.go). Their names
// start with tier1 so that they never collide with the helpers of the package's other files.

// tier1ShippedConflist is the chain the project ships for K3s: K3s's list with netready last.
const tier1ShippedConflist = "10-flannel-netready.conflist"

// tier1Bed is a bed whose bin dir holds netready besides K3s's plugins.
func tier1Bed(t *testing.T, dualStack bool) *testbed.Bed {
	t.Helper()
	return testbed.New(t, testbed.Options{Plugins: testbed.WithNetready, DualStack: dualStack})
}

// tier1ShippedList loads conflist/10-flannel-netready.conflist into the bed, with the given fields
// of its netready object set (probes, logFile, timeout...). It first checks that the file is
// K3s's chain with netready last, as K3S.md requires (containerd loads only one list).
func tier1ShippedList(t *testing.T, b *testbed.Bed, fields map[string]any) *libcni.NetworkConfigList {
	t.Helper()
	root, err := testbed.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, "conflist", tier1ShippedConflist)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var list map[string]any
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	plugins, _ := list["plugins"].([]any)
	var kinds []string
	for _, p := range plugins {
		m, _ := p.(map[string]any)
		typ, _ := m["type"].(string)
		kinds = append(kinds, typ)
		if typ == testbed.Netready {
			maps.Copy(m, fields)
		}
	}
	if want := []string{"flannel", "portmap", "bandwidth", "netready"}; !slices.Equal(kinds, want) {
		t.Fatalf("%s: plugin types %q, want K3s's chain with netready last %q", path, kinds, want)
	}
	out, err := json.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	return confList(t, b, out)
}

// tier1Netready is a netready object for testbed.K3sConflist: the annotations capability
// declared, as in conflist/, plus fields.
func tier1Netready(t *testing.T, fields map[string]any) string {
	t.Helper()
	obj := map[string]any{
		"type":         testbed.Netready,
		"capabilities": map[string]bool{"io.kubernetes.cri.pod-annotations": true},
	}
	maps.Copy(obj, fields)
	b, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// tier1LogFile is a path for netready's logFile inside the bed's dir (removed with the bed).
func tier1LogFile(b *testbed.Bed, name string) string {
	return filepath.Join(b.Dir, "netready-tier1-"+name+".log")
}

// tier1LastRecord is the last record of netready's log for this verb and container.
func tier1LastRecord(t *testing.T, path, verb, container string) logLine {
	t.Helper()
	recs := readLog(t, path)
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].Verb == verb && recs[i].Container == container {
			return recs[i]
		}
	}
	t.Fatalf("netready's log %s has no %s record for container %s", path, verb, container)
	return logLine{}
}

// readyAt is when the condition held, on the test's clock: netready started total_ms before it
// wrote the record, and after_ms counts from that start.
func (r logLine) readyAt(c logrec.Condition) time.Time {
	return r.Start().Add(logrec.MS(c.AfterMS))
}

// probeOrigins maps each logged probe URL to where it came from (config, rules[N], annotation).
func (r logLine) probeOrigins() map[string]string {
	m := map[string]string{}
	for _, p := range r.Probes {
		m[p.URL] = p.Origin
	}
	return m
}

// tier1CNIError returns the CNI error a plugin of the chain answered with, or nil.
func tier1CNIError(err error) *types.Error {
	var e *types.Error
	if errors.As(err, &e) {
		return e
	}
	return nil
}

// addTryAgain runs ADD of pod through list where it cannot pass (why, for the message): the
// ADD must fail with a CNI error of code 11 (try again later), which it returns with how long
// the ADD took.
func addTryAgain(ctx context.Context, t *testing.T, b *testbed.Bed, list *libcni.NetworkConfigList, pod *testbed.Pod, why string) (*types.Error, time.Duration) {
	t.Helper()
	start := time.Now()
	_, err := b.Add(ctx, list, pod)
	took := time.Since(start)
	t.Logf("ADD took %v: %v", took, err)
	e := tier1CNIError(err)
	switch {
	case err == nil:
		t.Fatalf("ADD succeeded through %s", why)
	case e == nil:
		t.Fatalf("ADD error %T %v, want a *types.Error", err, err)
	case e.Code != types.ErrTryAgainLater:
		t.Errorf("ADD error code %d, want %d (try again later)", e.Code, types.ErrTryAgainLater)
	}
	return e, took
}

// tier1Serve accepts connections on l (a listener made inside some netns) until the test ends,
// writes greeting and a newline to each and closes it. The channel receives each peer's address
// (dropped when nobody reads).
func tier1Serve(t *testing.T, l net.Listener, greeting string) <-chan net.Addr {
	peers := make(chan net.Addr, 16)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return // closed
			}
			select {
			case peers <- c.RemoteAddr():
			default:
			}
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, greeting+"\n")
			c.Close()
		}
	})
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	return peers
}

// tier1Greeting connects with dial (from some netns) within timeout and reads the server's line.
// It returns the line and how long the connect took.
func tier1Greeting(ctx context.Context, dial func(context.Context, string, string) (net.Conn, error), address string, timeout time.Duration) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	c, err := dial(ctx, "tcp", address)
	took := time.Since(start)
	if err != nil {
		return "", took, err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetReadDeadline(d)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), took, err
}

// tier1Connect connects once to address from the pod within timeout (below the kernel's 1 s SYN
// retransmission, so that success means the first SYN got through) and reports how long it took.
func tier1Connect(ctx context.Context, pod *testbed.Pod, address string, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	c, err := pod.Dial(ctx, "tcp", address)
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	return took, c.Close()
}

// tier1WatchDefaultRoute reports when the pod's IPv4 default route appears: the last thing the
// bridge plugin does in the pod's netns (address, link up, routes), so "the bridge has set up the
// pod". The channel receives that moment once; it is closed without a value when the watch ends
// first (the test ends). The watch runs on a non-blocking netlink socket created in the pod's
// netns, read through Go's poller, so that the test's end stops it.
func tier1WatchDefaultRoute(t *testing.T, pod *testbed.Pod) <-chan time.Time {
	t.Helper()
	var fd int
	err := pod.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		if err = unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_IPV4_ROUTE}); err != nil {
			unix.Close(fd)
		}
		return err
	})
	if err != nil {
		t.Fatalf("route watch in %s: %v", pod.Name, err)
	}
	sock := os.NewFile(uintptr(fd), "route watch "+pod.Name)
	seen := make(chan time.Time, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(seen)
		buf := make([]byte, 64<<10)
		for {
			n, err := sock.Read(buf)
			at := time.Now()
			if errors.Is(err, unix.ENOBUFS) {
				continue
			}
			if err != nil {
				return // closed
			}
			msgs, err := syscall.ParseNetlinkMessage(buf[:n])
			if err != nil {
				continue
			}
			for _, m := range msgs {
				if m.Header.Type != unix.RTM_NEWROUTE || len(m.Data) < unix.SizeofRtMsg {
					continue
				}
				// struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
				family, dstLen, table, typ := m.Data[0], m.Data[1], m.Data[4], m.Data[7]
				if family == unix.AF_INET && dstLen == 0 && table == unix.RT_TABLE_MAIN && typ == unix.RTN_UNICAST {
					seen <- at
					return
				}
			}
		}
	})
	t.Cleanup(func() {
		sock.Close()
		wg.Wait()
	})
	return seen
}

// tier1Durations summarizes measured durations for the log.
type tier1Durations []time.Duration

func (ds tier1Durations) String() string {
	if len(ds) == 0 {
		return "none"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	round := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	return fmt.Sprintf("n=%d min=%v p50=%v mean=%v max=%v", len(s), round(s[0]), round(s[len(s)/2]),
		round(sum/time.Duration(len(s))), round(s[len(s)-1]))
}

// tier1ResultAddr is the first IPv4 address of a CNI result.
func tier1ResultAddr(t *testing.T, ips []*current.IPConfig) netip.Addr {
	t.Helper()
	for _, ip := range ips {
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok && a.Unmap().Is4() {
			return a.Unmap()
		}
	}
	t.Fatalf("no IPv4 address in the result's ips %v", ips)
	return netip.Addr{}
}

// Bounds of the timing checks. The machine running these tests may be far busier than its two
// cores (load averages above 20 were seen while they ran), so they are loose; the logs give the
// real figures. What they must catch: an ADD that returned before the path opened, a gate that
// noticed the opening only through a retransmission (1 s) or its timeout.
const (
	// tier1ReturnBound bounds ADD's return after the opening: the probe's next attempt, the
	// gate's teardown, the process's exit and libcni, on a starved CPU.
	tier1ReturnBound = 2 * time.Second
	// tier1ReadyBound bounds when netready saw the target answer, after the opening: below the
	// kernel's first SYN retransmission, which netready must never wait for.
	tier1ReadyBound = time.Second
)

// tier1CheckOpened checks ADD's return against an opening of the path that lasted from
// requested (the lift began) to opened (the path was open): never before the lift began (the
// path could not be open yet), within tier1ReturnBound after it was open. It returns the lag.
func tier1CheckOpened(t *testing.T, what string, requested, opened, returned time.Time) time.Duration {
	t.Helper()
	lag := returned.Sub(opened)
	switch {
	case returned.Before(requested):
		t.Errorf("%s: ADD returned %v BEFORE the path opened", what, requested.Sub(returned))
	case lag > tier1ReturnBound:
		t.Errorf("%s: ADD returned %v after the path opened, want within %v", what, lag, tier1ReturnBound)
	}
	return lag
}

// tier1CheckReady checks when netready saw a condition hold (readyAt, from its log) against the
// moment the path was open: within tier1ReadyBound. readyAt is at most a few milliseconds early
// (see readyAt), so it can only make the check looser; for the same reason it is not compared with
// the start of the opening (tier1CheckOpened does that with ADD's return).
func tier1CheckReady(t *testing.T, what string, opened, ready time.Time) time.Duration {
	t.Helper()
	lag := ready.Sub(opened)
	if lag > tier1ReadyBound {
		t.Errorf("%s: ready %v after the path opened, want within %v", what, lag, tier1ReadyBound)
	}
	return lag
}
