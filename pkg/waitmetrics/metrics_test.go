package waitmetrics

import (
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/netready/netready/internal/logfile"
	"github.com/netready/netready/internal/logrec"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func record(pod string, outcome logrec.Outcome, totalMS float64, conds ...logrec.Condition) logrec.Record {
	return logrec.Record{Time: t0, Level: logrec.LevelInfo, Msg: "netready ADD", Verb: "ADD",
		Outcome: outcome, TotalMS: totalMS, Pod: pod, Conditions: conds}
}

func writeRecord(t *testing.T, lf logfile.File, r logrec.Record) {
	t.Helper()
	line, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lf.Append(line); err != nil {
		t.Fatal(err)
	}
}

// TestMetricsFromRotatingLog: records written by the real rotating writer, followed across
// rotations by Tail, end up in the metrics exactly once each.
func TestMetricsFromRotatingLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "netready.log")
	lf := logfile.File{Path: path, MaxBytes: 1500, Keep: 2}
	m := New(false)
	tail := &Tail{Path: path}
	t.Cleanup(func() { tail.Close() })
	poll := func() {
		t.Helper()
		if err := tail.Poll(m.ObserveLine); err != nil {
			t.Fatal(err)
		}
	}
	poll() // no file yet: nothing, no error

	const ready, timeouts = 30, 5
	for i := range ready {
		writeRecord(t, lf, record(fmt.Sprintf("shop/p%d", i), logrec.Ready, 3,
			logrec.Condition{Name: "link eth0", Ready: true, AfterMS: 0.1, Attempts: 1},
			logrec.Condition{Name: "tcp://10.0.0.9:5432", Ready: true, AfterMS: 2.5, Attempts: 1}))
		if i%4 == 0 {
			poll() // polls fall between some writes and after several rotations
		}
	}
	for range timeouts {
		writeRecord(t, lf, record("analytics/c", logrec.Timeout, 30000,
			logrec.Condition{Name: "icmp://10.0.0.7", Attempts: 700, Error: "no answer"}))
	}
	writeRecord(t, lf, record("kube-system/coredns", logrec.Skipped, 0.2))
	writeRecord(t, lf, logrec.Record{Time: t0, Verb: "DEL", Outcome: logrec.OK})
	poll()
	if _, err := os.Stat(logfile.Generation(path, 1)); err != nil {
		t.Fatalf("the writer never rotated; the test needs it: %v", err)
	}

	fams, text := scrape(t, m)
	for _, tc := range []struct {
		family string
		labels map[string]string
		want   float64
	}{
		{"netready_adds_total", map[string]string{"outcome": "ready"}, ready},
		{"netready_adds_total", map[string]string{"outcome": "timeout"}, timeouts},
		{"netready_adds_total", map[string]string{"outcome": "skipped"}, 1},
		{"netready_timeouts_total", map[string]string{"on_timeout": "fail"}, timeouts},
		{"netready_timeouts_total", map[string]string{"on_timeout": "allow"}, 0},
		{"netready_conditions_unmet_total", map[string]string{"kind": "icmp"}, timeouts},
		{"netready_log_lines_skipped_total", nil, 0},
	} {
		if got := counter(t, fams, tc.family, tc.labels); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.family, tc.labels, got, tc.want)
		}
	}
	wait := histogram(t, fams, "netready_wait_seconds", nil)
	if wait.GetSampleCount() != ready+timeouts || bucket(wait, 0.005) != ready || bucket(wait, 0.001) != 0 ||
		bucket(wait, 30) != ready+timeouts {
		t.Errorf("wait histogram: %v", wait)
	}
	if got := wait.GetSampleSum(); got < 150 || got > 150.1 {
		t.Errorf("wait sum %v, want 5×30 s + 30×3 ms", got)
	}
	if h := histogram(t, fams, "netready_condition_seconds", map[string]string{"kind": "tcp"}); h.GetSampleCount() != ready || bucket(h, 0.0025) != ready {
		t.Errorf("tcp condition histogram: %v", h)
	}
	if h := histogram(t, fams, "netready_condition_seconds", map[string]string{"kind": "link"}); bucket(h, 0.001) != ready {
		t.Errorf("link condition histogram: %v", h)
	}
	if strings.Contains(text, "namespace=") || strings.Contains(text, "go_goroutines") {
		t.Error("/metrics has namespace labels or Go's default collectors, which nobody opted into")
	}
}

// TestPodDeletedLine: the line of an ADD ended by podWatch (the pod was
// deleted while it waited) parses and counts as a wait, with its outcome.
func TestPodDeletedLine(t *testing.T) {
	line := []byte(`{"time":"2026-11-30T22:30:00Z","level":"ERROR","msg":"netready ADD","verb":"ADD","outcome":"pod-deleted","total_ms":2210.5,` +
		`"pod":"default/web","conditions":[{"name":"tcp://198.51.100.10:5432","ready":false,"attempts":60,"error":"no answer within 1s"}],` +
		`"code":100,"error":"pod default/web was deleted while netready waited (after 2.21s): pod default/web is being deleted: deletionTimestamp 2026-11-30T22:29:59Z (watch)"}` + "\n")
	m := New(false)
	m.ObserveLine(line)
	fams, _ := scrape(t, m)
	if got := counter(t, fams, "netready_adds_total", map[string]string{"outcome": "pod-deleted"}); got != 1 {
		t.Errorf("adds_total{outcome=pod-deleted} = %v, want 1", got)
	}
	if got := counter(t, fams, "netready_log_lines_skipped_total", nil); got != 0 {
		t.Errorf("the line was skipped")
	}
	if h := histogram(t, fams, "netready_wait_seconds", nil); h.GetSampleCount() != 1 || h.GetSampleSum() < 2.2 || h.GetSampleSum() > 2.3 {
		t.Errorf("wait histogram: %v, want the 2.21 s wait", h)
	}
	if got := counter(t, fams, "netready_conditions_unmet_total", map[string]string{"kind": "tcp"}); got != 1 {
		t.Errorf("unmet tcp = %v, want 1", got)
	}
}

func TestNamespaceLabelsOptIn(t *testing.T) {
	m := New(true)
	m.Observe(record("shop/a", logrec.Ready, 3))
	m.Observe(record("", logrec.Ready, 3))
	m.Observe(record(`we"ird\\ns/x`, logrec.Ready, 3))
	fams, _ := scrape(t, m)
	for ns, want := range map[string]float64{"shop": 1, "-": 1, `we"ird\\ns`: 1} {
		if got := counter(t, fams, "netready_adds_total", map[string]string{"outcome": "ready", "namespace": ns}); got != want {
			t.Errorf("namespace %q: %v, want %v", ns, got, want)
		}
	}
	if h := histogram(t, fams, "netready_wait_seconds", map[string]string{"namespace": "shop"}); h.GetSampleCount() != 1 {
		t.Errorf("wait in shop: %v", h)
	}
}

// TestTail covers what rotation can do to a reader, each case written by hand to the file.
func TestTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.log")
	var got []string
	tail := &Tail{Path: path}
	t.Cleanup(func() { tail.Close() })
	poll := func() {
		t.Helper()
		if err := tail.Poll(func(l []byte) { got = append(got, string(l)) }); err != nil {
			t.Fatal(err)
		}
	}
	appendTo := func(p, s string) {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(s)
		f.Close()
	}
	expect := func(step string, want ...string) {
		t.Helper()
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("%s: got %q, want %q", step, got, want)
		}
		got = nil
	}
	poll()
	expect("missing file")
	appendTo(path, "a\nb")
	poll()
	expect("a whole line and half of one", "a")
	appendTo(path, "c\n")
	poll()
	expect("the half completed", "bc")
	// Rotation: a line lands in the old file after the reader's last look, then the rename, then
	// the new file's first line.
	appendTo(path, "d\n")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	poll()
	expect("renamed, no new file yet", "d")
	appendTo(path+".1", "e\n") // a writer that opened the old name just before the rename
	appendTo(path, "f\n")
	poll()
	expect("new file", "e", "f")
	// Truncated in place, seen before the next line.
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	poll()
	expect("truncated")
	appendTo(path, "g\n")
	poll()
	expect("truncated", "g")
	// Removed and re-created between two polls.
	os.Remove(path)
	appendTo(path, "h\n\n")
	poll()
	expect("re-created, blank lines dropped", "h")
}

// scrape serves the metrics over HTTP and parses them with Prometheus' own text parser.
func scrape(t *testing.T, m *Metrics) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); expfmt.ResponseFormat(resp.Header).FormatType() != expfmt.TypeTextPlain {
		t.Errorf("Content-Type %q is not Prometheus' text format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("Prometheus' parser rejects /metrics: %v\n%s", err, body)
	}
	return fams, string(body)
}

func find(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("no family %s", name)
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				continue next
			}
		}
		return m
	}
	t.Fatalf("no series %s%v", name, labels)
	return nil
}

func counter(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	return find(t, fams, name, labels).GetCounter().GetValue()
}

func histogram(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Histogram {
	t.Helper()
	return find(t, fams, name, labels).GetHistogram()
}

func bucket(h *dto.Histogram, le float64) uint64 {
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == le {
			return b.GetCumulativeCount()
		}
	}
	return 1 << 63
}
