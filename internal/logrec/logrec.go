// Package logrec is netready's log line: one JSON object per invocation,
// written by the plugin and read by tests, metrics and `netready stats`.
package logrec

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Outcome is how an invocation ended.
type Outcome string

// The outcomes, as they appear in the log.
const (
	Ready          Outcome = "ready"           // ADD or CHECK: every condition held
	Skipped        Outcome = "skipped"         // the pod is not gated (Reason says why)
	Timeout        Outcome = "timeout"         // the budget ran out; code 11, the runtime retries
	TimeoutAllowed Outcome = "timeout-allowed" // the budget ran out with onTimeout "allow": passed, WARN
	Interrupted    Outcome = "interrupted"     // a signal from the runtime, or the netns removed
	PodDeleted     Outcome = "pod-deleted"     // the API server said the pod was deleted, re-created or is being deleted (podWatch)
	Failed         Outcome = "failed"          // a condition that cannot heal (link gone, DAD failed)
	Error          Outcome = "error"           // the invocation failed before or outside the gate (Code, Error)
	OK             Outcome = "ok"              // DEL, STATUS, GC, and what has nothing to wait for
)

// Levels, as log/slog spells them (the log was written by slog first).
const (
	LevelInfo  = "INFO"
	LevelWarn  = "WARN"
	LevelError = "ERROR"
)

// Record is one line of the log. The keys and their order are the log's
// format: readers exist outside this module (operators' scripts), so a key
// is never renamed or given another meaning.
type Record struct {
	Time    time.Time `json:"time"` // when the line was written, at the end of the verb
	Level   string    `json:"level"`
	Msg     string    `json:"msg"` // "netready " + Verb
	Verb    string    `json:"verb"`
	Outcome Outcome   `json:"outcome"`
	// TotalMS is the invocation's time from netready's start to the line.
	TotalMS     float64     `json:"total_ms"`
	Container   string      `json:"container,omitempty"`
	Pod         string      `json:"pod,omitempty"`    // namespace/name, when the runtime said
	Reason      string      `json:"reason,omitempty"` // why a pod was skipped
	Rule        string      `json:"rule,omitempty"`   // the rule that matched, e.g. rules[0]
	Annotations string      `json:"annotations,omitempty"`
	Probes      []Probe     `json:"probes,omitempty"`
	Conditions  []Condition `json:"conditions,omitempty"`
	// Notes say how the gate ran when the operator should know: why a probe
	// was probed alone instead of shared with the node's other ADDs.
	Notes []string `json:"notes,omitempty"`
	Code  uint     `json:"code,omitempty"` // the CNI error code, when the verb failed with one
	Error string   `json:"error,omitempty"`
}

// Probe is one probe of the pod's spec and where it came from: config,
// rules[N] or annotation.
type Probe struct {
	URL    string `json:"url"`
	Origin string `json:"origin"`
}

// Condition is one condition of the gate as it ended. It is also the
// element of a failed ADD's error details.
type Condition struct {
	Name  string `json:"name"`
	Ready bool   `json:"ready"`
	// AfterMS counts from netready's start, like TotalMS, so both lie on
	// one clock.
	AfterMS  float64 `json:"after_ms,omitempty"`
	Attempts int     `json:"attempts"`
	Error    string  `json:"error,omitempty"` // the last attempt's error, when not ready
	// Cause is the last error that was not a timeout, when Error is one
	// (gate.Status.LastCause): a firewall's reject, say, that the kernel's
	// ICMP rate limit lets through once a second.
	Cause string `json:"cause,omitempty"`
}

// Condition returns the record's condition of that name.
func (r Record) Condition(name string) (Condition, bool) {
	for _, c := range r.Conditions {
		if c.Name == name {
			return c, true
		}
	}
	return Condition{}, false
}

// Start is when netready started, on the clock of the line's Time.
func (r Record) Start() time.Time {
	return r.Time.Add(-MS(r.TotalMS))
}

// MS converts a field in milliseconds (total_ms, after_ms) to a duration.
func MS(ms float64) time.Duration {
	return time.Duration(ms * float64(time.Millisecond))
}

// Millis is d as the log writes it: milliseconds, to the microsecond.
func Millis(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}

// Marshal is the record as one line of the log, newline included. HTML
// characters are not escaped: the log is read by people and "<redacted>"
// should read as such.
func (r Record) Marshal() ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil { // Encode ends the line
		return nil, err
	}
	return b.Bytes(), nil
}

// ErrNotRecord is returned by Parse for a line that holds no netready
// record (a line of another program, a warning of netready's own).
var ErrNotRecord = errors.New("not a netready log record")

// Parse reads one line of the log. Whatever precedes the first '{' is
// ignored, so a line taken from a runtime's log that prefixes it (a
// timestamp, a stream name) parses too. A JSON object without a verb is
// not a record: Parse returns an error wrapping ErrNotRecord.
func Parse(line []byte) (Record, error) {
	i := bytes.IndexByte(line, '{')
	if i < 0 {
		return Record{}, fmt.Errorf("%w: no JSON object in %q", ErrNotRecord, clip(line))
	}
	var r Record
	if err := json.Unmarshal(bytes.TrimSpace(line[i:]), &r); err != nil {
		return Record{}, fmt.Errorf("netready log line %q: %w", clip(line), err)
	}
	if r.Verb == "" {
		return Record{}, fmt.Errorf("%w: no verb in %q", ErrNotRecord, clip(line))
	}
	return r, nil
}

// ReadAll parses every line of r: each must be a record (a log written
// by netready to a file holds nothing else). Empty lines are skipped.
func ReadAll(r io.Reader) ([]Record, error) {
	var out []Record
	s := bufio.NewScanner(r)
	s.Buffer(nil, 1<<20) // a record with many conditions is a few KB; allow far more
	for n := 1; s.Scan(); n++ {
		if len(bytes.TrimSpace(s.Bytes())) == 0 {
			continue
		}
		rec, err := Parse(s.Bytes())
		if err != nil {
			return out, fmt.Errorf("line %d: %w", n, err)
		}
		out = append(out, rec)
	}
	return out, s.Err()
}

// ReadFile is ReadAll of the file at path.
func ReadFile(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	recs, err := ReadAll(f)
	if err != nil {
		return recs, fmt.Errorf("%s: %w", path, err)
	}
	return recs, nil
}

// clip keeps an error about a long line readable.
func clip(b []byte) string {
	const max = 200
	if len(b) > max {
		return string(b[:max]) + "…"
	}
	return string(b)
}
