// Command bench measures what netready costs a K3s node and what it buys a pod, side by side with
// the alternatives (no gate, the init-container loop, application retries), in simulated K3s nodes
// (e2e/testbed): `make bench`, as root, in at most 10 minutes on a 2-core machine.
//
// It prints a table and, when BENCH_JSON names a file, writes the figures there as JSON:
//
//	overhead       {ratio, netready_ms_p50, pairs}
//	detect         {tcp, icmp, local: {p50_ms, p99_ms, max_ms, trials}}
//	initcontainer  {p50_ms, p99_ms, trials}
//	appretry       {success_rate, p50_ms}
//	fanout         {pods, ratio, failures, peak_rss_kb}
//	idle           {cpu_ms_per_s}
//	rate           {packets_per_s}
//	overhead_vs_noop {ratio, p50_ms_with, p50_ms_noop}
//	blocked_fanout {pods, seconds, cpu_cores, packets_per_s_per_target, failures,
//	                open_to_return_ms: {remote, local: {p50, p99}}}
//	idle_one       {cpu_ms_per_s}
//	seed           the containerd tier's seed figures, from $NETREADY_SEED_JSON when that file exists; else null
//
// Comparisons pair their runs (A B, B A, …: the order alternates so that neither side always
// runs on a warmer machine) and every measure of the alternatives uses the same random openings as
// netready's (see measure.go for what each figure is, exactly). -quick shrinks every count for a
// smoke test of a few seconds; its figures mean nothing. -only runs some stages; -netready measures
// another netready binary (a candidate fix) against the same chain.
//
// Besides the figures, the table shows what explains them: the CPU time of the chain's processes
// (getrusage of the waited-for children), netready's own time from its log, and per netready
// process its peak RSS, CPU time and sleeps, read by e2e/bench/rusage, a wrapper that runs netready
// as its child ("type": "netready-rusage"). TestProfileGate (profile_test.go) profiles a waiting
// gate in-process.
//
// Everything runs in network namespaces the program makes and removes, also on error or Ctrl-C.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/pkg/podcheck"

	"github.com/netready/netready/internal/testbin"
)

// options are the run's sizes. full() is `make bench`, quick() the smoke test.
type options struct {
	overheadPairs int           // paired ADDs with and without netready (≥ 30)
	detectTrials  int           // openings; each is measured for tcp, icmp, local, init loop and app retry (≥ 50)
	openMin       time.Duration // the path opens at a random moment in [openMin, openMax] after ADD starts
	openMax       time.Duration
	fanoutPods    int // pods ADDed at once (K3s's default max pods per node: 110)
	fanoutPairs   int
	idleWait      time.Duration   // how long the idle ADD stays blocked
	blockedPods   int             // blocked fanout: pods waiting at once (110)
	blockedWait   time.Duration   // blocked fanout: how long they wait before the path opens (20s)
	randSeed      uint64          // of the openings, so that two runs see the same ones
	budget        time.Duration   // the whole run, builds included
	only          map[string]bool // stages to run (overhead, detect, fanout, idle, blocked, idleone); nil: all but idleone (blocked runs it)
	netready      string          // a netready binary to measure instead of one built from this checkout

	jsonPath string // BENCH_JSON
	seedPath string // NETREADY_SEED_JSON
}

func full() options {
	return options{
		overheadPairs: 40,
		detectTrials:  50,
		openMin:       50 * time.Millisecond,
		openMax:       1500 * time.Millisecond,
		fanoutPods:    110,
		fanoutPairs:   3,
		idleWait:      10 * time.Second,
		blockedPods:   110,
		blockedWait:   20 * time.Second,
		randSeed:      1,
		budget:        10 * time.Minute,
	}
}

func quick() options {
	o := full()
	o.overheadPairs = 3
	o.detectTrials = 2
	o.openMax = 300 * time.Millisecond
	o.fanoutPods = 12
	o.fanoutPairs = 1
	o.idleWait = 2 * time.Second
	o.blockedPods = 12
	o.blockedWait = 4 * time.Second
	o.budget = 3 * time.Minute
	return o
}

func main() {
	isQuick := flag.Bool("quick", false, "a smoke test of a few seconds: every count shrunk (figures meaningless)")
	pairs := flag.Int("pairs", 0, "overhead: paired ADDs (default 40, quick 3)")
	trials := flag.Int("trials", 0, "detect, initcontainer, appretry: openings (default 50, quick 2)")
	pods := flag.Int("pods", 0, "fanout: pods ADDed at once (default 110, quick 12)")
	fanoutPairs := flag.Int("fanout-pairs", 0, "fanout: paired rounds (default 3, quick 1)")
	idle := flag.Duration("idle", 0, "idle: how long one ADD stays blocked (default 10s, quick 2s)")
	blockedPods := flag.Int("blocked-pods", 0, "blocked: pods waiting at once (default 110, quick 12)")
	blockedWait := flag.Duration("blocked-wait", 0, "blocked: how long they wait (default 20s, quick 4s)")
	randSeed := flag.Uint64("rand", 0, "seed of the random openings (default 1)")
	netreadyBin := flag.String("netready", "", "measure this netready binary (e.g. a candidate fix built elsewhere) instead of building ./plugin/netready")
	budget := flag.Duration("budget", 0, "the whole run's time limit, builds included (default 10m, quick 3m); when it runs out, the figures measured so far are printed and the run fails")
	only := flag.String("only", "", "run only these stages, comma-separated: overhead, detect, fanout, idle, blocked, idleone (blocked's last round alone; the others' figures are null)")
	flag.Parse()

	o := full()
	if *isQuick {
		o = quick()
	}
	for _, set := range []struct {
		flag int
		dst  *int
	}{{*pairs, &o.overheadPairs}, {*trials, &o.detectTrials}, {*blockedPods, &o.blockedPods}, {*pods, &o.fanoutPods}, {*fanoutPairs, &o.fanoutPairs}} {
		if set.flag > 0 {
			*set.dst = set.flag
		}
	}
	if *idle > 0 {
		o.idleWait = *idle
	}
	if *blockedWait > 0 {
		o.blockedWait = *blockedWait
	}
	if *randSeed > 0 {
		o.randSeed = *randSeed
	}
	if *budget > 0 {
		o.budget = *budget
	}
	if *only != "" {
		o.only = map[string]bool{}
		for _, s := range strings.Split(*only, ",") {
			o.only[strings.TrimSpace(s)] = true
		}
	}
	o.netready = *netreadyBin
	o.jsonPath = os.Getenv("BENCH_JSON")
	o.seedPath = os.Getenv("NETREADY_SEED_JSON")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// run measures everything o asks for, prints the table to out and writes the JSON.
func run(ctx context.Context, o options, out io.Writer) (*Figures, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("must run as root: it creates network namespaces, veths, routes and nftables rules (sudo make bench)")
	}
	if max(o.fanoutPods, o.blockedPods) > 250 {
		return nil, fmt.Errorf("fanout: %d pods do not fit host-local's /24", o.fanoutPods)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, o.budget, fmt.Errorf("the benchmark's budget of %v ran out; a slower machine needs more: -budget, or make bench BENCH_FLAGS=-budget=20m", o.budget))
	defer cancel()
	if removed, err := testbed.RemoveStale(); err == nil {
		for _, r := range removed {
			fmt.Fprintln(os.Stderr, "bench: removed the leftover of a killed run:", r)
		}
	}
	started := time.Now()
	loadBefore := loadavg()

	fmt.Fprintln(out, "building the CNI plugins …")
	bin, err := os.MkdirTemp("", fmt.Sprintf("nr-%d-bin-", os.Getpid())) // RemoveStale finds it if killed
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(bin)
	// netready's coordination files go with the bench's other files, not into /run/netready.
	runDir := filepath.Join(bin, "run")
	if err := os.Mkdir(runDir, 0o700); err != nil {
		return nil, err
	}
	os.Setenv(podcheck.RunDirEnv, runDir)
	if err := buildPlugins(bin, o.netready); err != nil {
		return nil, err
	}

	pluginStderr := &tailBuffer{max: 64 << 10}
	b, err := testbed.Start(ctx, testbed.Options{BinDir: bin, PluginStderr: pluginStderr})
	if err != nil {
		return nil, why(ctx, err)
	}
	defer func() {
		if err := b.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: cleanup:", err)
		}
	}()
	m, err := newMeasurer(ctx, b, o, out)
	if err != nil {
		return nil, why(ctx, err)
	}

	f := emptyFigures()
	res := &Extra{Opts: o}
	stages := []stage{
		{"overhead", func() error { return m.overhead(f, res) }},
		{"detect", func() error { return m.detect(f, res) }},
		{"fanout", func() error { return m.fanout(f, res) }},
		{"idle", func() error { return m.idleAndRate(f, res) }},
		{"blocked", func() error { return m.blocked(f, res) }},
		// blocked ends with idle one; run alone (-only idleone), it is the same round.
		{"idleone", func() error { _, err := m.idleOne(f, res); return err }},
	}
	stamp := func() {
		res.Started, res.Took = started, time.Since(started)
		res.LoadBefore, res.LoadAfter = loadBefore, loadavg()
	}
	if err := runStages(ctx, out, stages, o.only, res); err != nil {
		if tail := strings.TrimSpace(pluginStderr.String()); tail != "" {
			fmt.Fprintln(os.Stderr, "bench: the plugins' last stderr:\n"+tail)
		}
		if ctx.Err() == nil || len(res.Done) == 0 {
			return nil, err
		}
		// The budget ran out or the run was interrupted: what was measured is still worth
		// reading, marked as partial, before the run fails.
		res.Partial = err.Error()
		stamp()
		printTable(out, f, res)
		return nil, err
	}
	if f.Seed, err = readSeed(o.seedPath); err != nil {
		fmt.Fprintln(os.Stderr, "bench: seed figures:", err)
	}

	stamp()
	printTable(out, f, res)
	if o.jsonPath != "" {
		data, err := json.MarshalIndent(f, "", "  ")
		if err != nil {
			return f, err
		}
		if err := os.WriteFile(o.jsonPath, append(data, '\n'), 0o644); err != nil {
			return f, err
		}
		fmt.Fprintln(out, "figures written to", o.jsonPath)
	}
	return f, nil
}

// stage is one part of the benchmark, by the name -only selects it by.
type stage struct {
	name string
	fn   func() error
}

// runStages runs the stages only selects (nil: all but idleone, which blocked runs as its last
// round), in order, printing each one's time to out, and records each that finished in x.Done.
// It stops at the first that fails, naming it, and why when ctx ended it (the budget, a signal).
func runStages(ctx context.Context, out io.Writer, stages []stage, only map[string]bool, x *Extra) error {
	x.Done = map[string]bool{}
	for _, s := range stages {
		if only == nil && s.name == "idleone" || only != nil && !only[s.name] {
			continue
		}
		t := time.Now()
		fmt.Fprintf(out, "%-14s …", s.name)
		if err := s.fn(); err != nil {
			fmt.Fprintln(out)
			return fmt.Errorf("%s: %w", s.name, why(ctx, err))
		}
		x.Done[s.name] = true
		fmt.Fprintf(out, " %v\n", time.Since(t).Round(100*time.Millisecond))
	}
	return nil
}

// buildPlugins builds K3s's plugins and netready (or copies the netready binary given) into bin,
// and the rusage wrapper next to them.
func buildPlugins(bin, netready string) error {
	plugins := testbed.WithNetready
	if netready != "" {
		plugins = testbed.K3sPlugins
		data, err := os.ReadFile(netready)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(bin, testbed.Netready), data, 0o755); err != nil {
			return err
		}
	}
	if err := testbed.Build(bin, plugins...); err != nil {
		return err
	}
	root, err := testbed.ModuleRoot()
	if err != nil {
		return err
	}
	for typ, pkg := range map[string]string{rusageType: "./e2e/bench/rusage", noopType: "./e2e/bench/noop"} {
		if err := testbin.GoBuild(root, filepath.Join(bin, typ), nil, nil, pkg); err != nil {
			return err
		}
	}
	return nil
}

// readSeed returns the containerd tier's seed figures: the "seed" object of the file that
// `E2E_JSON=… make e2e` writes (or the whole file if it has no such key); nil when path is empty
// or names no file.
func readSeed(path string) (json.RawMessage, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if seed, ok := top["seed"]; ok {
		return seed, nil
	}
	return json.RawMessage(data), nil
}

// why names the interruption or the budget when that is what ended err.
func why(ctx context.Context, err error) error {
	if ctx.Err() != nil && !errors.Is(err, context.Cause(ctx)) {
		return fmt.Errorf("%w (%v)", err, context.Cause(ctx))
	}
	return err
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	fields := strings.Fields(string(b))
	if len(fields) < 3 {
		return "?"
	}
	return strings.Join(fields[:3], " ")
}
