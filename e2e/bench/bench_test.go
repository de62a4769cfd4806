package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// TestQuick runs the benchmark's quick mode end to end and checks that the JSON has every key of
// the issue with values that can be figures at all. It asserts no goal: quick figures mean nothing.
func TestQuick(t *testing.T) {
	testbed.SkipUnlessRoot(t)
	dir := t.TempDir()
	o := quick()
	o.jsonPath = filepath.Join(dir, "bench.json")
	o.seedPath = filepath.Join(dir, "seed.json")
	seed := `{"seed":{"pods":20,"without":{"first_connect_failures":20,"p50_ms_to_first_connect":1200}}}`
	if err := os.WriteFile(o.seedPath, []byte(seed), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var out strings.Builder
	if _, err := run(ctx, o, &out); err != nil {
		t.Fatalf("bench -quick: %v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	if left, _ := testbed.Leftovers(fmt.Sprintf("nr-%d-", os.Getpid())); len(left) > 0 {
		t.Errorf("netns left behind: %v", left)
	}

	data, err := os.ReadFile(o.jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("BENCH_JSON is not JSON: %v\n%s", err, data)
	}
	want := map[string][]string{
		"overhead":         {"ratio", "netready_ms_p50", "pairs"},
		"detect":           {"tcp", "icmp", "local"},
		"initcontainer":    {"p50_ms", "p99_ms", "trials"},
		"appretry":         {"success_rate", "p50_ms"},
		"fanout":           {"pods", "ratio", "failures", "peak_rss_kb"},
		"idle":             {"cpu_ms_per_s"},
		"rate":             {"packets_per_s"},
		"seed":             {"pods", "without"},
		"overhead_vs_noop": {"ratio", "p50_ms_with", "p50_ms_noop"},
		"blocked_fanout":   {"pods", "seconds", "cpu_cores", "packets_per_s_per_target", "failures", "open_to_return_ms", "floor_release_to_return_ms"},
		"idle_one":         {"cpu_ms_per_s"},
	}
	keysOf := func(m map[string]any) []string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		return ks
	}
	sorted := func(ks []string) []string { return slices.Sorted(slices.Values(ks)) }
	var wantTop []string
	for k := range want {
		wantTop = append(wantTop, k)
	}
	if !slices.Equal(keysOf(got), sorted(wantTop)) {
		t.Fatalf("top-level keys %v, want %v", keysOf(got), sorted(wantTop))
	}
	for k, sub := range want {
		obj, ok := got[k].(map[string]any)
		if !ok {
			t.Errorf("%s: %v, want an object", k, got[k])
			continue
		}
		if !slices.Equal(keysOf(obj), sorted(sub)) {
			t.Errorf("%s: keys %v, want %v", k, keysOf(obj), sorted(sub))
		}
	}
	detect, _ := got["detect"].(map[string]any)
	for _, kind := range []string{"tcp", "icmp", "local"} {
		obj, _ := detect[kind].(map[string]any)
		if !slices.Equal(keysOf(obj), sorted([]string{"p50_ms", "p99_ms", "max_ms", "trials"})) {
			t.Errorf("detect.%s: keys %v", kind, keysOf(obj))
		}
	}

	// Sane: every figure a finite number in its range.
	for _, c := range []struct {
		path     string
		min, max float64
	}{
		{"overhead.ratio", 0.2, 20},
		{"overhead.netready_ms_p50", 0.01, 5000},
		{"overhead.pairs", float64(o.overheadPairs), float64(o.overheadPairs)},
		{"detect.tcp.p50_ms", 0, 5000},
		{"detect.tcp.p99_ms", 0, 5000},
		{"detect.tcp.max_ms", 0, 5000},
		{"detect.tcp.trials", float64(o.detectTrials), float64(o.detectTrials)},
		{"detect.icmp.p50_ms", 0, 5000},
		{"detect.icmp.trials", float64(o.detectTrials), float64(o.detectTrials)},
		{"detect.local.p50_ms", 0, 5000},
		{"detect.local.trials", float64(o.detectTrials), float64(o.detectTrials)},
		{"initcontainer.p50_ms", 0, 60000},
		{"initcontainer.p99_ms", 0, 60000},
		{"initcontainer.trials", float64(o.detectTrials), float64(o.detectTrials)},
		{"appretry.success_rate", 0, 1},
		{"fanout.pods", float64(o.fanoutPods), float64(o.fanoutPods)},
		{"fanout.ratio", 0.1, 20},
		{"fanout.failures", 0, float64(o.fanoutPods)},
		{"fanout.peak_rss_kb", 1000, 1 << 20},
		{"idle.cpu_ms_per_s", 0, 1000},
		{"rate.packets_per_s", 1, 10000}, // blocked probes do send packets
		{"seed.pods", 20, 20},
		{"overhead_vs_noop.ratio", 0.2, 20},
		{"overhead_vs_noop.p50_ms_noop", 0.1, 5000},
		{"blocked_fanout.pods", float64(o.blockedPods), float64(o.blockedPods)},
		{"blocked_fanout.cpu_cores", 0.0001, 2},
		{"blocked_fanout.packets_per_s_per_target", 1, 10000},
		{"blocked_fanout.failures", 0, 0},
		{"blocked_fanout.open_to_return_ms.remote.p99", 0, 5000},
		{"blocked_fanout.open_to_return_ms.local.p99", 0, 5000},
		{"blocked_fanout.floor_release_to_return_ms.p99", 0, 5000},
		{"idle_one.cpu_ms_per_s", 0.001, 1000},
	} {
		v, ok := lookup(got, c.path).(float64)
		if !ok || math.IsNaN(v) || v < c.min || v > c.max {
			t.Errorf("%s = %v, want a number in [%g, %g]", c.path, lookup(got, c.path), c.min, c.max)
		}
	}
	if p50 := lookup(got, "appretry.p50_ms"); p50 != nil {
		if v, ok := p50.(float64); !ok || v < 0 {
			t.Errorf("appretry.p50_ms = %v, want null or a number ≥ 0", p50)
		}
	}
}

func lookup(m map[string]any, path string) any {
	var v any = m
	for _, k := range strings.Split(path, ".") {
		obj, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = obj[k]
	}
	return v
}

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		name          string
		xs            []float64
		p50, p99, max float64
	}{
		{"one", []float64{7}, 7, 7, 7},
		{"nearest rank", []float64{5, 1, 4, 2, 3}, 3, 5, 5},
		{"p99 of 100 is the 99th", func() []float64 {
			var xs []float64
			for i := 100; i >= 1; i-- {
				xs = append(xs, float64(i))
			}
			return xs
		}(), 50, 99, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := summarize(tc.xs)
			if float64(s.P50) != tc.p50 || float64(s.P99) != tc.p99 || float64(s.Max) != tc.max || s.N != len(tc.xs) {
				t.Errorf("summarize(%v) = %+v, want p50 %g p99 %g max %g", tc.xs, s, tc.p50, tc.p99, tc.max)
			}
		})
	}
	if s := summarize(nil); !math.IsNaN(float64(s.P50)) || s.N != 0 {
		t.Errorf("summarize(nil) = %+v, want NaN and no trials", s)
	}
	seed := `{"pods":3,"without":{"first_connect_failures":3,"p50_ms_to_first_connect":1200.4},"with":{"first_connect_failures":0,"p50_ms_to_first_connect":1100}}`
	if got, want := seedSummary(json.RawMessage(seed)), "3 pods per way; without: 3 first connects failed, p50 1200 ms to first connect; with: 0 first connects failed, p50 1100 ms to first connect"; got != want {
		t.Errorf("seedSummary = %q, want %q", got, want)
	}
	if b, _ := json.Marshal(num(math.NaN())); string(b) != "null" {
		t.Errorf("NaN marshals as %s, want null", b)
	}
	if m := median([]float64{1, 3, 2, 10}); m != 2.5 {
		t.Errorf("median = %g, want 2.5", m)
	}
}

func TestReadSeed(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, path, want string
	}{
		{"unset", "", "null"},
		{"no file", filepath.Join(dir, "missing.json"), "null"},
		{"seed object", write("a.json", `{"seed":{"pods":3}}`), `{"pods":3}`},
		{"bare figures", write("b.json", `{"pods":4}`), `{"pods":4}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readSeed(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(struct {
				S json.RawMessage `json:"s"`
			}{got})
			if want := `{"s":` + tc.want + `}`; string(b) != want {
				t.Errorf("got %s, want %s", b, want)
			}
		})
	}
}

// TestBudgetShowsWhatWasMeasured: when the budget runs out in a stage, the run fails naming the
// stage and the budget, and the table still shows the stages that finished, marked partial; the
// stage that ran out and the ones after it are not shown as if measured.
func TestBudgetShowsWhatWasMeasured(t *testing.T) {
	budgetErr := errors.New("the benchmark's budget of 50ms ran out")
	ctx, cancel := context.WithTimeoutCause(context.Background(), 50*time.Millisecond, budgetErr)
	defer cancel()
	f, x := emptyFigures(), &Extra{Opts: full()}
	var after bool
	stages := []stage{
		{"overhead", func() error { f.Overhead.Ratio, f.Overhead.Pairs = 1.234, 40; return nil }},
		{"detect", func() error { <-ctx.Done(); return ctx.Err() }},
		{"fanout", func() error { after = true; return nil }},
	}
	var out strings.Builder
	err := runStages(ctx, &out, stages, nil, x)
	if err == nil || !strings.HasPrefix(err.Error(), "detect: ") || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), budgetErr.Error()) {
		t.Fatalf("runStages = %v, want the detect stage's error naming the budget", err)
	}
	if after {
		t.Error("the stage after the one that ran out ran")
	}
	if !x.Done["overhead"] || x.Done["detect"] || x.Done["fanout"] {
		t.Errorf("Done = %v, want overhead only", x.Done)
	}
	x.Partial = err.Error()
	out.Reset()
	printTable(&out, f, x)
	table := out.String()
	for _, want := range []string{"PARTIAL: only the stages that finished are shown: detect: ", "overhead: ADD with/without", "1.234"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	for _, not := range []string{"detect tcp", "fanout:", "blocked fanout"} {
		if strings.Contains(table, not) {
			t.Errorf("table shows %q, a stage that did not finish:\n%s", not, table)
		}
	}

	// A complete run: every stage selected is shown, nothing is marked partial.
	x = &Extra{Opts: full()}
	if err := runStages(context.Background(), &out, stages[:1], nil, x); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	printTable(&out, f, x)
	if strings.Contains(out.String(), "PARTIAL") || !strings.Contains(out.String(), "overhead: ADD with/without") {
		t.Errorf("a complete run's table:\n%s", out.String())
	}
}
