package waitstats

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/internal/logfile"
	"github.com/netready/netready/internal/logrec"
)

func TestKind(t *testing.T) {
	for name, want := range map[string]string{
		"link eth0":                     "link",
		"address 10.42.0.5 on eth0":     "address",
		"IPv4 default route":            "route",
		"IPv6 default route":            "route",
		"route to 10.15.21.167":         "route",
		"gateway 10.42.0.1":             "gateway",
		"icmp://10.0.0.1":               "icmp",
		"tcp://10.0.0.1:5432":           "tcp",
		"dns://10.43.0.10/kube-dns":     "dns",
		"http://10.0.0.1/health":        "http",
		"https://[fd00::1]:8443/":       "http",
		"ftp://10.0.0.1/":               "",
		"something netready adds later": "",
	} {
		if got := Kind(name); got != want {
			t.Errorf("Kind(%q) = %q, want %q", name, got, want)
		}
	}
}

func ms(n float64) time.Duration { return logrec.MS(n) }

func TestNewDist(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- { // 1..100 ms, given unsorted
		ds = append(ds, ms(float64(i)))
	}
	d := NewDist(ds)
	if d.N != 100 || d.P50 != ms(50) || d.P90 != ms(90) || d.P99 != ms(99) || d.Max != ms(100) {
		t.Errorf("1..100 ms: got %+v", d)
	}
	if d := NewDist([]time.Duration{ms(7)}); d.P50 != ms(7) || d.P99 != ms(7) || d.Max != ms(7) {
		t.Errorf("one value: got %+v", d)
	}
	if d := NewDist(nil); d != (Dist{}) {
		t.Errorf("none: got %+v", d)
	}
}

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func add(pod string, outcome logrec.Outcome, totalMS float64, conds ...logrec.Condition) logrec.Record {
	return logrec.Record{Time: t0, Level: logrec.LevelInfo, Msg: "netready ADD", Verb: "ADD",
		Outcome: outcome, TotalMS: totalMS, Pod: pod, Conditions: conds}
}

func cond(name string, ready bool, afterMS float64) logrec.Condition {
	return logrec.Condition{Name: name, Ready: ready, AfterMS: afterMS, Attempts: 1}
}

func TestSummarize(t *testing.T) {
	recs := []logrec.Record{
		add("shop/a", logrec.Ready, 4, cond("link eth0", true, 0.1), cond("gateway 10.42.0.1", true, 0.5), cond("tcp://10.0.0.9:5432", true, 3.5)),
		add("shop/b", logrec.Ready, 1500, cond("link eth0", true, 0.2), cond("tcp://10.0.0.9:5432", true, 1499)),
		add("analytics/c", logrec.Timeout, 30000, cond("link eth0", true, 0.1), logrec.Condition{Name: "tcp://10.0.0.7:8123", Attempts: 700, Error: "no answer"}),
		add("kube-system/coredns-x", logrec.Skipped, 0.2),
		{Time: t0, Verb: "ADD", Outcome: logrec.Error, Code: 7, TotalMS: 0.3},
		{Time: t0.Add(time.Minute), Verb: "DEL", Outcome: logrec.OK, Pod: "shop/a"},
	}
	s := Summarize(recs, 2)
	if s.Records != 6 || s.ADDs != 5 {
		t.Errorf("records %d ADDs %d, want 6 and 5", s.Records, s.ADDs)
	}
	wantOutcomes := map[logrec.Outcome]int{logrec.Ready: 2, logrec.Timeout: 1, logrec.Skipped: 1, logrec.Error: 1}
	for o, n := range wantOutcomes {
		if s.Outcomes[o] != n {
			t.Errorf("outcome %s: %d, want %d", o, s.Outcomes[o], n)
		}
	}
	if s.Wait.N != 3 || s.Wait.Max != ms(30000) || s.Wait.P50 != ms(1500) {
		t.Errorf("wait: %+v; want 3 gated ADDs (skipped and error are not waits), p50 1.5s, max 30s", s.Wait)
	}
	if d := s.ByNamespace["shop"]; d.N != 2 || d.Max != ms(1500) {
		t.Errorf("shop: %+v", d)
	}
	if _, ok := s.ByNamespace["kube-system"]; ok {
		t.Error("a skipped namespace has a wait")
	}
	if d := s.ByKind["tcp"]; d.N != 2 || d.Max != ms(1499) {
		t.Errorf("tcp: %+v; want the 2 ready tcp conditions (the unmet one has no time)", d)
	}
	if d := s.ByKind["gateway"]; d.N != 1 {
		t.Errorf("gateway: %+v", d)
	}
	if len(s.Slowest) != 2 || s.Slowest[0].Pod != "analytics/c" || s.Slowest[1].Pod != "shop/b" {
		t.Fatalf("slowest: %+v", s.Slowest)
	}
	if !strings.Contains(s.Slowest[0].Slowest, "tcp://10.0.0.7:8123 (not ready: no answer)") ||
		s.Slowest[1].Slowest != "tcp://10.0.0.9:5432" {
		t.Errorf("what the slowest waited for: %q, %q", s.Slowest[0].Slowest, s.Slowest[1].Slowest)
	}
	if !s.From.Equal(t0) || !s.To.Equal(t0.Add(time.Minute)) {
		t.Errorf("span %v..%v", s.From, s.To)
	}
}

func TestVerdict(t *testing.T) {
	many := func(n int, totalMS float64) []logrec.Record {
		var out []logrec.Record
		for range n {
			out = append(out, add("ns/p", logrec.Ready, totalMS))
		}
		return out
	}
	for _, tc := range []struct {
		name string
		recs []logrec.Record
		want string
	}{
		{"nothing", nil, "no gated ADD"},
		{"fast", many(20, 5), "below 2s"},
		{"a slow tail", append(many(17, 5), many(3, 2500)...), "1 of 10 pods waits longer"},
		{"slow", append(many(5, 5), many(15, 3000)...), "ABOVE 2s"},
		{"exactly 2s is not above", many(10, 2000), "below 2s"},
		{"one slow namespace", append(many(20, 5), func() []logrec.Record {
			var r []logrec.Record
			for range 3 {
				r = append(r, add("analytics/x", logrec.Ready, 2500))
			}
			return r
		}()...), "ABOVE 2s in analytics (p50 2.5s)"},
		{"timeouts said", append(many(20, 5), add("ns/t", logrec.Timeout, 30000)), "; 1 timed out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Summarize(tc.recs, 5).Verdict(); !strings.Contains(got, tc.want) {
				t.Errorf("verdict %q, want it to say %q", got, tc.want)
			}
		})
	}
}

func TestWriteTable(t *testing.T) {
	recs := []logrec.Record{
		add("shop/a", logrec.Ready, 4, cond("tcp://10.0.0.9:5432", true, 3.5)),
		add("analytics/c", logrec.Timeout, 30000, logrec.Condition{Name: "tcp://10.0.0.7:8123", Error: "no answer"}),
	}
	var b bytes.Buffer
	if err := Summarize(recs, 10).WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"OUTCOME", "ready", "timeout", "WAIT BY NAMESPACE", "analytics", "shop",
		"CONDITION HELD AFTER", "tcp", "SLOWEST PODS", "analytics/c", "30s", "verdict: mostly below 2s"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

// TestReadLogRotated writes records through the real rotating writer until it has rotated, then
// reads every generation back: nothing lost, oldest first, --since honoured, junk lines counted.
func TestReadLogRotated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "netready.log")
	lf := logfile.File{Path: path, MaxBytes: 2000, Keep: 50}
	const n = 40
	for i := range n {
		r := add("ns/pod-"+string(rune('a'+i%26)), logrec.Ready, float64(i))
		r.Time = t0.Add(time.Duration(i) * time.Second)
		line, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := lf.Append(line); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(logfile.Generation(path, 2)); err != nil {
		t.Fatalf("the writer did not rotate twice (the test needs it): %v", err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("netready: could not rotate: disk full\n{\"torn\n")
	f.Close()

	recs, bad, err := ReadLog(path, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != n || bad != 2 {
		t.Fatalf("read %d records and %d bad lines, want %d and 2", len(recs), bad, n)
	}
	for i, r := range recs {
		if r.TotalMS != float64(i) {
			t.Fatalf("record %d has total_ms %v: generations not read oldest first", i, r.TotalMS)
		}
	}
	recs, _, err = ReadLog(path, t0.Add(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 10 {
		t.Errorf("since the 30th record: %d records, want 10", len(recs))
	}
	if _, _, err := ReadLog(filepath.Join(t.TempDir(), "none.log"), time.Time{}); err == nil {
		t.Error("a missing log read without error")
	}
}
