// Command demo shows, in a simulated K3s node, what netready changes for a pod whose network path
// opens about a second after the CNI chain has run (k3s issue 11489): without netready the pod's
// first connection fails; with netready, ADD waits for the path and the first connection works.
//
// It needs root. Everything happens in network namespaces it makes and removes (e2e/testbed),
// also on error or Ctrl-C. It exits non-zero unless both outcomes are shown.
//
//	go run ./e2e/demo [-bin DIR]
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/netready/netready/e2e/testbed"
)

const (
	openDelay      = time.Second // how late the path opens
	connectTimeout = time.Second // the app's first connection attempt
	budget         = 50 * time.Second
)

func main() {
	bin := flag.String("bin", "", "directory with the built CNI plugins (bridge, host-local, portmap, bandwidth, loopback, flannel, netready); empty: build them")
	runs := flag.String("run", "1,2", "which runs to show: 1 (without netready), 2 (with netready), or 1,2")
	flag.Parse()
	os.Exit(run(*bin, *runs))
}

func run(bin, runs string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	want1, want2 := strings.Contains(runs, "1"), strings.Contains(runs, "2")

	if bin == "" {
		dir, err := os.MkdirTemp("", fmt.Sprintf("nr-%d-bin-", os.Getpid())) // RemoveStale finds it if killed
		if err != nil {
			return fail(err)
		}
		defer os.RemoveAll(dir)
		plugins := testbed.K3sPlugins
		if want2 {
			plugins = testbed.WithNetready
		}
		fmt.Println("building the CNI plugins …")
		if err := testbed.Build(dir, plugins...); err != nil {
			return fail(err)
		}
		bin = dir
	}

	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	stderr := &syncBuffer{}
	b, err := testbed.Start(ctx, testbed.Options{BinDir: bin, PluginStderr: stderr})
	if err != nil {
		return stopped(ctx, err)
	}
	defer func() {
		if err := b.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "cleanup:", err)
		}
	}()
	fmt.Printf("simulated node %s: pods %s via cni0 → node → router → db %s (tcp %d)\n",
		b.Prefix, testbed.PodCIDR, testbed.DBAddr, testbed.TCPPort)

	fault, err := b.BlockRouter(ctx)
	if err != nil {
		return stopped(ctx, err)
	}
	fmt.Printf("the router drops traffic to the db (nft); it will open %v late\n", openDelay)

	ok := true
	if want1 {
		list, err := b.ConfList(testbed.K3sConflist("1.0.0"))
		if err != nil {
			return stopped(ctx, err)
		}
		r, err := withoutNetready(ctx, b, list, fault)
		if err != nil {
			return stopped(ctx, err)
		}
		r.print("Run 1: K3s chain without netready (flannel, portmap, bandwidth)")
		if r.connectErr == nil {
			fmt.Println("  ✗ expected the first connection to fail, it succeeded")
			ok = false
		} else {
			fmt.Println("  ✓ the app's first connection failed: the pod started before its network worked")
		}
	}
	if want2 {
		stderr.Reset() // from here on, what the plugins log is netready's
		if err := fault.Block(); err != nil {
			return stopped(ctx, err)
		}
		netready := fmt.Sprintf(`{"type":"netready","probes":[%q],"timeout":"10s"}`, testbed.ProbeDB)
		list, err := b.ConfList(testbed.K3sConflist("1.0.0", netready))
		if err != nil {
			return stopped(ctx, err)
		}
		r, err := withNetready(ctx, b, list, fault)
		if err != nil {
			return stopped(ctx, err)
		}
		r.print("Run 2: the same chain + " + netready)
		if log := strings.TrimSpace(stderr.String()); log != "" {
			fmt.Println("  netready's log:")
			for _, line := range strings.Split(log, "\n") {
				fmt.Println("    " + line)
			}
		}
		switch {
		case r.addErr != nil:
			fmt.Println("  ✗ ADD failed:", r.addErr)
			ok = false
		case r.connectErr != nil:
			fmt.Println("  ✗ expected the first connection to succeed:", r.connectErr)
			ok = false
		default:
			fmt.Println("  ✓ ADD waited for the path; the app's first connection worked")
		}
	}
	if ctx.Err() != nil {
		return fail(context.Cause(ctx))
	}
	if !ok {
		fmt.Println("FAIL: the demonstration did not show the expected outcome")
		return 1
	}
	fmt.Println("PASS")
	return 0
}

// outcome is one run's timeline.
type outcome struct {
	t0         time.Time
	events     []event
	addErr     error
	connectErr error
}

type event struct {
	at   time.Time
	what string
}

func (o *outcome) add(at time.Time, format string, args ...any) {
	o.events = append(o.events, event{at, fmt.Sprintf(format, args...)})
}

func (o *outcome) print(title string) {
	fmt.Println()
	fmt.Println(title)
	sort.SliceStable(o.events, func(i, j int) bool { return o.events[i].at.Before(o.events[j].at) })
	for _, e := range o.events {
		fmt.Printf("  t=%7.1f ms  %s\n", float64(e.at.Sub(o.t0).Microseconds())/1000, e.what)
	}
}

// withoutNetready: ADD, then the path opens openDelay after ADD returned, while the app, started
// at once, tries its first connection.
func withoutNetready(ctx context.Context, b *testbed.Bed, list *libcni.NetworkConfigList, fault *testbed.Fault) (*outcome, error) {
	o := &outcome{}
	pod, err := b.NewPod(ctx)
	if err != nil {
		return nil, err
	}
	if err := addPod(ctx, b, list, pod, o, nil); err != nil {
		return nil, err
	}
	if o.addErr != nil {
		return nil, fmt.Errorf("ADD: %w", o.addErr)
	}
	opened := fault.OpenAt(time.Now().Add(openDelay))
	firstConnect(ctx, pod, o)
	return o, finish(ctx, b, list, pod, opened, o)
}

// withNetready: the path opens openDelay after ADD started; ADD holds until it does.
func withNetready(ctx context.Context, b *testbed.Bed, list *libcni.NetworkConfigList, fault *testbed.Fault) (*outcome, error) {
	o := &outcome{}
	pod, err := b.NewPod(ctx)
	if err != nil {
		return nil, err
	}
	var opened <-chan testbed.Opened
	if err := addPod(ctx, b, list, pod, o, func() { opened = fault.OpenAt(o.t0.Add(openDelay)) }); err != nil {
		return nil, err
	}
	if o.addErr == nil {
		firstConnect(ctx, pod, o)
	}
	return o, finish(ctx, b, list, pod, opened, o)
}

// addPod runs ADD for the pod, noting when the bridge plugin gave eth0 its address (seen from the
// pod's netns) and when ADD returned. atStart, if any, runs right after t=0.
func addPod(ctx context.Context, b *testbed.Bed, list *libcni.NetworkConfigList, pod *testbed.Pod, o *outcome, atStart func()) error {
	addressed, stopWatch, err := watchFirstIPv4(pod)
	if err != nil {
		return err
	}
	defer stopWatch()

	o.t0 = time.Now()
	o.add(o.t0, "ADD start")
	if atStart != nil {
		atStart()
	}
	_, err = b.Add(ctx, list, pod)
	end := time.Now()
	if err != nil {
		o.addErr = err
		o.add(end, "ADD failed: %v", err)
	} else {
		o.add(end, "ADD returned")
	}
	select {
	case a := <-addressed:
		o.add(a.at, "bridge: eth0 got %s", a.what)
	default:
	}
	return nil
}

// firstConnect is the app's first TCP connection: a fresh socket in the pod, connectTimeout.
func firstConnect(ctx context.Context, pod *testbed.Pod, o *outcome) {
	start := time.Now()
	o.add(start, "first connect to %s", testbed.DBTCP)
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	c, err := pod.Dial(cctx, "tcp", testbed.DBTCP.String())
	end := time.Now()
	if err != nil {
		o.connectErr = err
		o.add(end, "first connect FAILED after %v: %v", end.Sub(start).Round(time.Millisecond), unwrapOp(err))
		return
	}
	c.Close()
	o.add(end, "first connect ok in %v", end.Sub(start).Round(10*time.Microsecond))
}

// finish waits for the path to open, notes when it did, and DELs the pod.
func finish(ctx context.Context, b *testbed.Bed, list *libcni.NetworkConfigList, pod *testbed.Pod, opened <-chan testbed.Opened, o *outcome) error {
	select {
	case op, ok := <-opened:
		if !ok {
			return errors.New("the bed closed before the path opened")
		}
		if op.Err != nil {
			return op.Err
		}
		o.add(op.At, "path opened (nft rule removed in router)")
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	if err := b.Del(ctx, list, pod); err != nil {
		return fmt.Errorf("DEL: %w", err)
	}
	return pod.Remove()
}

// watchFirstIPv4 reports when the first IPv4 address appears in the pod's netns.
func watchFirstIPv4(pod *testbed.Pod) (<-chan event, func(), error) {
	h, err := netns.GetFromPath(pod.Path)
	if err != nil {
		return nil, nil, err
	}
	updates := make(chan netlink.AddrUpdate, 16)
	done := make(chan struct{})
	if err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{Namespace: &h}); err != nil {
		h.Close()
		return nil, nil, err
	}
	first := make(chan event, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		for u := range updates {
			if u.NewAddr && u.LinkAddress.IP.To4() != nil && !u.LinkAddress.IP.IsLoopback() {
				select {
				case first <- event{time.Now(), u.LinkAddress.String()}:
				default:
				}
			}
		}
	})
	stop := func() {
		close(done)
		wg.Wait() // updates is closed by netlink once done is
		h.Close()
	}
	return first, stop, nil
}

func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Err
	}
	return err
}

func fail(err error) int {
	fmt.Fprintln(os.Stderr, "demo:", err)
	return 1
}

// stopped reports an error, naming the interruption or the deadline when that was its cause.
func stopped(ctx context.Context, err error) int {
	if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		err = fmt.Errorf("%v (after: %w)", context.Cause(ctx), err)
	}
	return fail(err)
}

// syncBuffer collects the plugins' stderr.
type syncBuffer struct {
	mu sync.Mutex
	// guarded by mu
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Reset()
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}
