package logrec

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// slogLine is a line as netready wrote it with log/slog before this type
// existed: the format readers outside the module know.
const slogLine = `{"time":"2026-11-30T18:02:11.431Z","level":"ERROR","msg":"netready ADD","verb":"ADD","outcome":"timeout","total_ms":5003.118,"container":"97d4c0","pod":"default/pod-2","rule":"rules[0]","annotations":"ignored: annotations.allow is false in the netready config","probes":[{"url":"tcp://198.51.100.10:5432","origin":"config"}],"conditions":[{"name":"link eth0","ready":true,"after_ms":0.121,"attempts":1},{"name":"tcp://198.51.100.10:5432","ready":false,"attempts":29,"error":"no answer within 1s"}],"code":11,"error":"pod network not ready after 5.003s: <redacted>"}`

func TestParseSlogLine(t *testing.T) {
	r, err := Parse([]byte(slogLine))
	if err != nil {
		t.Fatal(err)
	}
	want := Record{
		Time:    time.Date(2026, 11, 30, 18, 2, 11, 431e6, time.UTC),
		Level:   LevelError,
		Msg:     "netready ADD",
		Verb:    "ADD",
		Outcome: Timeout, TotalMS: 5003.118,
		Container: "97d4c0", Pod: "default/pod-2", Rule: "rules[0]",
		Annotations: "ignored: annotations.allow is false in the netready config",
		Probes:      []Probe{{URL: "tcp://198.51.100.10:5432", Origin: "config"}},
		Conditions: []Condition{
			{Name: "link eth0", Ready: true, AfterMS: 0.121, Attempts: 1},
			{Name: "tcp://198.51.100.10:5432", Attempts: 29, Error: "no answer within 1s"},
		},
		Code:  11,
		Error: "pod network not ready after 5.003s: <redacted>",
	}
	if !r.Time.Equal(want.Time) {
		t.Errorf("time %v, want %v", r.Time, want.Time)
	}
	r.Time = want.Time
	if !reflect.DeepEqual(r, want) {
		t.Errorf("Parse:\n got %+v\nwant %+v", r, want)
	}
	if got := r.Start(); !got.Equal(want.Time.Add(-5003118 * time.Microsecond)) {
		t.Errorf("Start() = %v", got)
	}
	if c, ok := r.Condition("link eth0"); !ok || c.AfterMS != 0.121 {
		t.Errorf("Condition(link eth0) = %+v, %v", c, ok)
	}
	if _, ok := r.Condition("gateway"); ok {
		t.Error("Condition(gateway) found a condition the record does not have")
	}
}

// TestMarshalKeepsFormat: Marshal writes the keys slog wrote, in slog's
// order, with the same values, and does not escape "<redacted>".
func TestMarshalKeepsFormat(t *testing.T) {
	r, err := Parse([]byte(slogLine))
	if err != nil {
		t.Fatal(err)
	}
	line, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(line, []byte("}\n")) || bytes.Count(line, []byte("\n")) != 1 {
		t.Fatalf("Marshal gave %q, want one line ending in a newline", line)
	}
	if !bytes.Contains(line, []byte("<redacted>")) {
		t.Errorf("Marshal escaped HTML: %s", line)
	}
	if got, want := keys(t, line), keys(t, []byte(slogLine)); !slices.Equal(got, want) {
		t.Errorf("keys\n got %v\nwant %v", got, want)
	}
	var got, want map[string]any
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(slogLine), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("values differ:\n got %v\nwant %v", got, want)
	}
}

// TestMarshalOmits: what slog left out when it had no value stays out; the
// three keys every line had stay in.
func TestMarshalOmits(t *testing.T) {
	line, err := Record{Time: time.Unix(0, 0).UTC(), Level: LevelInfo, Msg: "netready DEL", Verb: "DEL", Outcome: OK}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"time", "level", "msg", "verb", "outcome", "total_ms"}
	if got := keys(t, line); !slices.Equal(got, want) {
		t.Errorf("keys %v, want %v: %s", got, want, line)
	}
}

// keys lists a JSON object's top-level keys in order.
func keys(t *testing.T, line []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(line))
	if _, err := dec.Token(); err != nil {
		t.Fatal(err)
	}
	var out []string
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, k.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		verb    string
		outcome Outcome
		err     string // "" for none
		notRec  bool   // the error wraps ErrNotRecord
	}{
		{name: "plain", line: `{"verb":"DEL","outcome":"ok"}`, verb: "DEL", outcome: OK},
		{name: "trailing newline", line: "{\"verb\":\"DEL\",\"outcome\":\"ok\"}\r\n", verb: "DEL", outcome: OK},
		{name: "containerd prefix", line: `2026-11-30T18:02:11.431Z stderr F {"verb":"ADD","outcome":"ready"}`, verb: "ADD", outcome: Ready},
		{name: "unknown keys kept out", line: `{"verb":"STATUS","outcome":"error","later":1}`, verb: "STATUS", outcome: Error},
		{name: "unknown outcome passes through", line: `{"verb":"ADD","outcome":"newer"}`, verb: "ADD", outcome: "newer"},
		{name: "no object", line: `containerd started`, err: "no JSON object", notRec: true},
		{name: "not netready's", line: `{"level":"WARN","msg":"netready: cannot open logFile, logging to stderr"}`, err: "no verb", notRec: true},
		{name: "torn", line: `{"verb":"ADD","outcome":"rea`, err: "unexpected end of JSON input"},
		{name: "two glued", line: `{"verb":"ADD"}{"verb":"DEL"}`, err: "invalid character"},
		{name: "wrong type", line: `{"verb":"ADD","total_ms":"3"}`, err: "total_ms"},
		{name: "empty", line: ``, err: "no JSON object", notRec: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Parse([]byte(tt.line))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Parse(%q) = %+v, %v; want an error containing %q", tt.line, r, err, tt.err)
				}
				if got := errors.Is(err, ErrNotRecord); got != tt.notRec {
					t.Errorf("errors.Is(ErrNotRecord) = %v, want %v", got, tt.notRec)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.line, err)
			}
			if r.Verb != tt.verb || r.Outcome != tt.outcome {
				t.Errorf("Parse(%q) = verb %q outcome %q, want %q %q", tt.line, r.Verb, r.Outcome, tt.verb, tt.outcome)
			}
		})
	}
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.log")
	if err := os.WriteFile(good, []byte(slogLine+"\n\n"+`{"verb":"DEL","outcome":"ok"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	recs, err := ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Verb != "ADD" || recs[1].Verb != "DEL" {
		t.Errorf("ReadFile = %+v, want the ADD and the DEL", recs)
	}

	bad := filepath.Join(dir, "bad.log")
	if err := os.WriteFile(bad, []byte(slogLine+"\n"+`{"verb":"DEL"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if recs, err := ReadFile(bad); err == nil || !strings.Contains(err.Error(), "bad.log: line 2") || len(recs) != 1 {
		t.Errorf("ReadFile of a torn line = %d records, %v; want the first record and an error naming line 2", len(recs), err)
	}
	if _, err := ReadFile(filepath.Join(dir, "missing.log")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadFile of a missing file: %v, want ErrNotExist", err)
	}
}

func TestMillis(t *testing.T) {
	for _, d := range []time.Duration{0, time.Microsecond, 3*time.Millisecond + 250*time.Microsecond, 30 * time.Second} {
		if got := MS(Millis(d)); got != d {
			t.Errorf("MS(Millis(%v)) = %v", d, got)
		}
	}
	if got := Millis(1500 * time.Nanosecond); got != 0.001 {
		t.Errorf("Millis(1.5µs) = %v, want 0.001 (to the microsecond)", got)
	}
}
