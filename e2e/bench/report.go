package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// Figures is what BENCH_JSON receives: exactly the keys of the benchmark issue.
type Figures struct {
	Overhead Overhead `json:"overhead"`
	Detect   struct {
		TCP   Detect `json:"tcp"`
		ICMP  Detect `json:"icmp"`
		Local Detect `json:"local"`
	} `json:"detect"`
	InitContainer InitContainer   `json:"initcontainer"`
	AppRetry      AppRetry        `json:"appretry"`
	Fanout        Fanout          `json:"fanout"`
	Idle          Idle            `json:"idle"`
	Rate          Rate            `json:"rate"`
	Seed          json.RawMessage `json:"seed"` // null when there are none

	OverheadVsNoop OverheadVsNoop `json:"overhead_vs_noop"`
	BlockedFanout  BlockedFanout  `json:"blocked_fanout"`
	IdleOne        IdleOne        `json:"idle_one"`
}

// OverheadVsNoop is ADD with netready against ADD with a chained plugin that only prints
// prevResult (e2e/bench/noop), in the same run as overhead.
type OverheadVsNoop struct {
	Ratio     num `json:"ratio"` // median over the runs of ADD(with)/ADD(noop)
	P50MSWith num `json:"p50_ms_with"`
	P50MSNoop num `json:"p50_ms_noop"`
}

// BlockedFanout is many pods waiting at once on a closed path, then its opening.
type BlockedFanout struct {
	Pods                 int `json:"pods"`
	Seconds              num `json:"seconds"`   // how long they waited
	CPUCores             num `json:"cpu_cores"` // all netready processes, remote round's window
	PacketsPerSPerTarget num `json:"packets_per_s_per_target"`
	Failures             int `json:"failures"`
	OpenToReturn         struct {
		Remote P50P99 `json:"remote"`
		Local  P50P99 `json:"local"`
	} `json:"open_to_return_ms"`
	// Floor is the same return for as many no-op plugins released at once: what this machine
	// takes to wake, exit and reap that many chained Go plugins, whatever they do.
	Floor P50P99 `json:"floor_release_to_return_ms"`
}

type P50P99 struct {
	P50 num `json:"p50"`
	P99 num `json:"p99"`
}

type IdleOne struct {
	CPUMSPerS num `json:"cpu_ms_per_s"`
}

type Overhead struct {
	Ratio         num `json:"ratio"`           // median over pairs of ADD(with)/ADD(without)
	NetreadyMSP50 num `json:"netready_ms_p50"` // netready's own total_ms, median
	Pairs         int `json:"pairs"`
}

type Detect struct {
	P50    num `json:"p50_ms"`
	P99    num `json:"p99_ms"`
	Max    num `json:"max_ms"`
	Trials int `json:"trials"` // ADDs that returned ready; failures are in the table
}

type InitContainer struct {
	P50    num `json:"p50_ms"`
	P99    num `json:"p99_ms"`
	Trials int `json:"trials"`
}

type AppRetry struct {
	SuccessRate num `json:"success_rate"` // 0..1
	P50         num `json:"p50_ms"`       // of the successes, after the opening
}

type Fanout struct {
	Pods      int   `json:"pods"`
	Ratio     num   `json:"ratio"` // median over pairs of wall(with)/wall(without)
	Failures  int   `json:"failures"`
	PeakRSSKB int64 `json:"peak_rss_kb"`
}

type Idle struct {
	CPUMSPerS num `json:"cpu_ms_per_s"`
}

type Rate struct {
	PacketsPerS num `json:"packets_per_s"` // the larger of the tcp and icmp targets
}

// emptyFigures has every figure null, until a stage measures it.
func emptyFigures() *Figures {
	nan := num(math.NaN())
	f := &Figures{
		Overhead:      Overhead{Ratio: nan, NetreadyMSP50: nan},
		InitContainer: InitContainer{P50: nan, P99: nan},
		AppRetry:      AppRetry{SuccessRate: nan, P50: nan},
		Fanout:        Fanout{Ratio: nan},
		Idle:          Idle{CPUMSPerS: nan},
		Rate:          Rate{PacketsPerS: nan},
	}
	f.Detect.TCP = Detect{P50: nan, P99: nan, Max: nan}
	f.Detect.ICMP, f.Detect.Local = f.Detect.TCP, f.Detect.TCP
	f.OverheadVsNoop = OverheadVsNoop{Ratio: nan, P50MSWith: nan, P50MSNoop: nan}
	f.BlockedFanout = BlockedFanout{Seconds: nan, CPUCores: nan, PacketsPerSPerTarget: nan}
	f.BlockedFanout.OpenToReturn.Remote = P50P99{nan, nan}
	f.BlockedFanout.OpenToReturn.Local = P50P99{nan, nan}
	f.IdleOne = IdleOne{CPUMSPerS: nan}
	return f
}

// num is a figure in JSON: three decimals, null when it could not be measured (NaN).
type num float64

func (n num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, math.Round(f*1000)/1000, 'f', -1, 64), nil
}

// Extra is what the table shows besides the figures.
type Extra struct {
	Opts                  options
	Done                  map[string]bool // the stages that finished
	Partial               string          // why the run stopped before its last stage; "" when it did not
	Started               time.Time
	Took                  time.Duration
	LoadBefore, LoadAfter string

	AddWithout, AddWith, NetreadyOwn summary
	AddCPUWithout, AddCPUWith        summary    // CPU of the chain's processes per ADD
	DetectFailed                     [3]int     // tcp, icmp, local
	DetectTail                       [3]summary // from netready's log line to ADD's return
	Init, App                        summary

	FanoutWithout, FanoutWith       []float64 // wall ms per round
	FanoutCPUWithout, FanoutCPUWith []float64 // CPU ms of the chain's processes per round
	// netready processes of the rusage round: CPU ms, wall ms, voluntary context switches
	FanoutNetreadyCPU, FanoutNetreadyWall, FanoutNetreadySleeps summary
	AloneNetreadyCPU, AloneNetreadyWall, AloneNetreadySleeps    summary // the same, one ADD at a time
	FanoutFailedWithout                                         int
	FanoutFirstErr                                              string

	IdleTCP, IdleICMP       float64 // CPU ms per s
	IdleTCPRec, IdleICMPRec rusageRecord
	RateTCP, RateICMP       float64
	RateWindow              time.Duration

	AddNoop, AddNoopCPU               summary // ADD with the no-op plugin in netready's place
	BlockedLocalCPU                   float64 // cores, node-local round
	BlockedWindow                     time.Duration
	BlockedRemoteMax, BlockedLocalMax num
	BlockedFloor                      summary // ms from the release to each no-op ADD's return
	IdleOnePackets                    float64
	BlockedFirstErr                   string
}

// summary is a sample's distribution, in ms; NaN where the sample is empty.
type summary struct {
	N                  int
	P50, P90, P99, Max num
}

// summarize uses nearest-rank percentiles: with 50 trials p99 is the largest.
func summarize(xs []float64) summary {
	if len(xs) == 0 {
		nan := num(math.NaN())
		return summary{P50: nan, P90: nan, P99: nan, Max: nan}
	}
	rank := func(p float64) num { return num(testbed.Percentile(xs, p)) }
	return summary{N: len(xs), P50: rank(50), P90: rank(90), P99: rank(99), Max: rank(100)}
}

// median is the middle value (the mean of the two middle ones for an even count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func detectFig(xs []float64) Detect {
	s := summarize(xs)
	return Detect{P50: s.P50, P99: s.P99, Max: s.Max, Trials: s.N}
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// goal is one line of the table's last columns.
func goal(ok bool, text string) (string, string) {
	if ok {
		return text, "met"
	}
	return text, "MISSED"
}

func printTable(out io.Writer, f *Figures, x *Extra) {
	o := x.Opts
	ran := func(stage string) bool { return x.Done[stage] }
	fmt.Fprintf(out, "\nnetready benchmark, %s, took %v; load average %s before, %s after\n",
		x.Started.Format(time.RFC3339), x.Took.Round(time.Second), x.LoadBefore, x.LoadAfter)
	if o.netready != "" {
		fmt.Fprintf(out, "netready measured: %s (-netready)\n", o.netready)
	}
	if x.Partial != "" {
		fmt.Fprintf(out, "PARTIAL: only the stages that finished are shown: %s\n", x.Partial)
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(name, value, goalText, verdict string) {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", name, value, goalText, verdict)
	}
	f1 := func(n num) string {
		if math.IsNaN(float64(n)) {
			return "-"
		}
		return strconv.FormatFloat(float64(n), 'f', 1, 64)
	}
	row("FIGURE", "VALUE", "GOAL", "")

	if ran("overhead") {
		g, v := goal(f.Overhead.Ratio <= 1.10, "≤ 1.10")
		row("overhead: ADD with/without", fmt.Sprintf("%.3f  (p50 %s → %s ms, %d pairs)",
			float64(f.Overhead.Ratio), f1(x.AddWithout.P50), f1(x.AddWith.P50), f.Overhead.Pairs), g, v)
		row("  netready's own time", fmt.Sprintf("p50 %s ms, p90 %s ms (total_ms in its log)", f1(x.NetreadyOwn.P50), f1(x.NetreadyOwn.P90)), "", "")
		row("  CPU of the chain per ADD", fmt.Sprintf("p50 %s → %s ms", f1(x.AddCPUWithout.P50), f1(x.AddCPUWith.P50)), "", "")
		g, v = goal(f.OverheadVsNoop.Ratio <= 1.05, "≤ 1.05")
		row("overhead vs no-op plugin", fmt.Sprintf("%.3f  (p50 %s → %s ms; the no-op's CPU p50 %s ms)",
			float64(f.OverheadVsNoop.Ratio), f1(f.OverheadVsNoop.P50MSNoop), f1(f.OverheadVsNoop.P50MSWith), f1(x.AddNoopCPU.P50)), g, v)
	}

	if ran("detect") {
		for i, d := range []struct {
			name     string
			fig      Detect
			p50, p99 float64
			cause    string
		}{
			{"detect tcp", f.Detect.TCP, 25, 60, "nft drop in router"},
			{"detect icmp", f.Detect.ICMP, 25, 60, "nft drop in router"},
			{"detect local", f.Detect.Local, 3, 10, "blackhole route on node"},
		} {
			ok := d.fig.Trials > 0 && float64(d.fig.P50) <= d.p50 && float64(d.fig.P99) <= d.p99 && x.DetectFailed[i] == 0
			g, v := goal(ok, fmt.Sprintf("p50 ≤ %g, p99 ≤ %g", d.p50, d.p99))
			failed := ""
			if x.DetectFailed[i] > 0 {
				failed = fmt.Sprintf(", %d ADDs FAILED", x.DetectFailed[i])
			}
			row(d.name+" ("+d.cause+")", fmt.Sprintf("p50 %s  p99 %s  max %s ms  (%d trials%s)",
				f1(d.fig.P50), f1(d.fig.P99), f1(d.fig.Max), d.fig.Trials, failed), g, v)
			row("  of which log line → return", fmt.Sprintf("p50 %s  p90 %s ms (netready's exit, libcni)",
				f1(x.DetectTail[i].P50), f1(x.DetectTail[i].P90)), "", "")
		}
		speedup := float64(f.InitContainer.P50) / float64(f.Detect.TCP.P50)
		g, v := goal(speedup >= 20, "≥ 20× detect tcp p50")
		row("init-container loop", fmt.Sprintf("p50 %s  p99 %s ms  (%d trials; %.0f× detect tcp p50)",
			f1(f.InitContainer.P50), f1(f.InitContainer.P99), f.InitContainer.Trials, speedup), g, v)
		row("app retry (3 × 1 s)", fmt.Sprintf("%.0f%% connected, p50 %s ms (%d of %d)",
			100*float64(f.AppRetry.SuccessRate), f1(f.AppRetry.P50), x.App.N, o.detectTrials), "", "")
	}

	if ran("fanout") {
		g, v := goal(f.Fanout.Failures == 0 && f.Fanout.Ratio <= 1.25 && f.Fanout.PeakRSSKB <= 20*1024,
			"0 failures, ≤ 1.25, ≤ 20 MB")
		row(fmt.Sprintf("fanout: %d pods at once", f.Fanout.Pods), fmt.Sprintf("ratio %.3f (wall %s → %s ms), %d failures, peak RSS %.1f MB",
			float64(f.Fanout.Ratio), msList(x.FanoutWithout), msList(x.FanoutWith), f.Fanout.Failures, float64(f.Fanout.PeakRSSKB)/1024), g, v)
		row("  CPU of the chain per round", fmt.Sprintf("%s → %s ms", msList(x.FanoutCPUWithout), msList(x.FanoutCPUWith)), "", "")
		row("  one netready alone", fmt.Sprintf("p50 CPU %s ms, wall %s ms, %s sleeps",
			f1(x.AloneNetreadyCPU.P50), f1(x.AloneNetreadyWall.P50), f1(x.AloneNetreadySleeps.P50)), "", "")
		row("  each netready in the fanout", fmt.Sprintf("p50 CPU %s ms, wall %s ms, %s sleeps; p90 CPU %s ms, wall %s ms, %s sleeps",
			f1(x.FanoutNetreadyCPU.P50), f1(x.FanoutNetreadyWall.P50), f1(x.FanoutNetreadySleeps.P50),
			f1(x.FanoutNetreadyCPU.P90), f1(x.FanoutNetreadyWall.P90), f1(x.FanoutNetreadySleeps.P90)), "", "")
		if x.FanoutFailedWithout > 0 || x.FanoutFirstErr != "" {
			row("  fanout errors", fmt.Sprintf("%d without netready; first: %s", x.FanoutFailedWithout, x.FanoutFirstErr), "", "")
		}
	}

	if ran("idle") {
		g, v := goal(f.Idle.CPUMSPerS <= 20, "≤ 20 ms/s")
		row(fmt.Sprintf("idle: blocked %v", o.idleWait), fmt.Sprintf("%.2f ms CPU/s (tcp probe; icmp probe %.2f)", float64(f.Idle.CPUMSPerS), x.IdleICMP), g, v)
		g, v = goal(f.Rate.PacketsPerS <= 30, "≤ 30 /s")
		row("rate: blocked, steady", fmt.Sprintf("%.1f packets/s per target (tcp %.1f, icmp %.1f, over %v)",
			float64(f.Rate.PacketsPerS), x.RateTCP, x.RateICMP, x.RateWindow.Round(time.Millisecond)), g, v)
	}
	if ran("blocked") {
		b := f.BlockedFanout
		row(fmt.Sprintf("blocked fanout: %d pods, %gs", b.Pods, float64(b.Seconds)), "", "", "")
		g, v := goal(b.CPUCores <= 0.10, "≤ 0.10")
		row("  CPU of all netready, cores", fmt.Sprintf("%.3f remote, %.3f node-local (window %v)", float64(b.CPUCores), x.BlockedLocalCPU, x.BlockedWindow.Round(time.Millisecond)), g, v)
		g, v = goal(b.PacketsPerSPerTarget <= 40, "≤ 40 /s")
		row("  probe packets per target", fmt.Sprintf("%.1f /s", float64(b.PacketsPerSPerTarget)), g, v)
		r, l := b.OpenToReturn.Remote, b.OpenToReturn.Local
		g, v = goal(r.P99 <= 60 && b.Failures == 0, "p99 ≤ 60, 0 failures")
		row("  opening → every ADD returned, remote", fmt.Sprintf("p50 %s  p99 %s  max %s ms, %d failures", f1(r.P50), f1(r.P99), f1(x.BlockedRemoteMax), b.Failures), g, v)
		g, v = goal(l.P99 <= 10 && b.Failures == 0, "p99 ≤ 10, 0 failures")
		row("  opening → every ADD returned, node-local", fmt.Sprintf("p50 %s  p99 %s  max %s ms", f1(l.P50), f1(l.P99), f1(x.BlockedLocalMax)), g, v)
		row("  floor: as many no-op plugins released at once", fmt.Sprintf("p50 %s  p99 %s  max %s ms", f1(x.BlockedFloor.P50), f1(x.BlockedFloor.P99), f1(x.BlockedFloor.Max)), "", "")
		if x.BlockedFirstErr != "" {
			row("  first error", x.BlockedFirstErr, "", "")
		}
	}
	if ran("blocked") || ran("idleone") {
		if x.BlockedFirstErr != "" && !ran("blocked") {
			row("  first error", x.BlockedFirstErr, "", "")
		}
		g, v := goal(f.IdleOne.CPUMSPerS <= 5, "≤ 5 ms/s")
		row(fmt.Sprintf("idle one: one pod blocked %v", o.idleWait), fmt.Sprintf("%.2f ms CPU/s, %.1f packets/s", float64(f.IdleOne.CPUMSPerS), x.IdleOnePackets), g, v)
	}
	row("seed (containerd tier)", seedSummary(f.Seed), "", "")
	w.Flush()
}

// seedSummary is one line of the containerd tier's figures: per way (without, with,
// initcontainer) its first-connect failures and p50 time to first connect, else the JSON itself.
func seedSummary(seed json.RawMessage) string {
	if seed == nil {
		return "none: NETREADY_SEED_JSON unset or no such file"
	}
	var doc map[string]json.RawMessage
	if json.Unmarshal(seed, &doc) == nil {
		var parts []string
		for _, way := range []string{"without", "with", "initcontainer"} {
			var s struct {
				Failures *int     `json:"first_connect_failures"`
				P50      *float64 `json:"p50_ms_to_first_connect"`
			}
			if json.Unmarshal(doc[way], &s) == nil && s.Failures != nil && s.P50 != nil {
				parts = append(parts, fmt.Sprintf("%s: %d first connects failed, p50 %.0f ms to first connect", way, *s.Failures, *s.P50))
			}
		}
		if len(parts) > 0 {
			return fmt.Sprintf("%s pods per way; %s", doc["pods"], strings.Join(parts, "; "))
		}
	}
	if s := string(seed); len(s) <= 200 {
		return s
	}
	return string(seed[:200]) + "…"
}

func msList(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.FormatFloat(x, 'f', 0, 64)
	}
	return strings.Join(parts, ",")
}
