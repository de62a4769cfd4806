// Package waitmetrics turns netready's log records into Prometheus metrics of the wait, for the
// agent's /metrics: ADDs by outcome, the wait and each kind of condition as histograms, timeouts.
//
// It writes Prometheus' text format itself rather than through client_golang: the agent is a mode
// of the binary that runs every ADD, and linking client_golang (with protobuf and procfs) made
// every exec of that binary pay its package initialisers: 4x the init allocations and a measurably
// slower start (README, "Watch it"). Counters and fixed-bucket histograms are all this needs; the
// tests read the output back with Prometheus' own parser (prometheus/common/expfmt).
package waitmetrics

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/netready/netready/internal/logrec"
	"github.com/netready/netready/pkg/waitstats"
)

// Buckets of the wait histograms, in seconds: from 1 ms (a ready network costs netready a few)
// through the 2 s worth a look, to the 110 s cap on netready's timeout.
var Buckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120}

// Metrics are the agent's metrics; safe for concurrent use.
type Metrics struct {
	namespaces bool

	mu       sync.Mutex // guards the families below
	families []*family
	adds     *family
	wait     *family
	conds    *family
	unmet    *family
	timeouts *family
	badLines *family
}

// family is one metric family: a counter or a histogram, its series keyed by label values.
type family struct {
	name, help, typ string
	labels          []string
	series          map[string]*series
}

type series struct {
	values []string
	value  float64  // counter
	counts []uint64 // histogram: per bucket, not cumulative
	sum    float64
	count  uint64
}

// New makes the metrics. With namespaces, the ADD counter and the wait histogram carry the pod's
// namespace as a label: one series per namespace, so only where the operator knows they are few.
func New(namespaces bool) *Metrics {
	var ns []string
	if namespaces {
		ns = []string{"namespace"}
	}
	m := &Metrics{namespaces: namespaces}
	add := func(name, typ, help string, labels ...string) *family {
		f := &family{name: name, help: help, typ: typ, labels: labels, series: map[string]*series{}}
		m.families = append(m.families, f)
		return f
	}
	m.adds = add("netready_adds_total", "counter",
		"CNI ADDs netready logged, by outcome (ready, skipped, timeout, timeout-allowed, interrupted, pod-deleted, failed, error).",
		append([]string{"outcome"}, ns...)...)
	m.wait = add("netready_wait_seconds", "histogram",
		"How long a gated ADD held the pod: netready's start to ready (or to giving up).", ns...)
	m.conds = add("netready_condition_seconds", "histogram",
		"When each condition held, from netready's start, by kind (link, address, route, gateway, icmp, tcp, dns, http).", "kind")
	m.unmet = add("netready_conditions_unmet_total", "counter",
		"Conditions still unmet when a gated ADD ended, by kind: what pods waited for in vain.", "kind")
	m.timeouts = add("netready_timeouts_total", "counter",
		"ADDs whose budget ran out, by what followed: fail (CNI error 11, the kubelet retries) or allow (passed with a warning).", "on_timeout")
	m.badLines = add("netready_log_lines_skipped_total", "counter",
		"Lines of the log that were not netready records (its own warnings, torn lines).")
	// These exist from the start, so a rate() sees 0 rather than nothing.
	m.timeouts.get("fail")
	m.timeouts.get("allow")
	m.badLines.get()
	return m
}

func (f *family) get(values ...string) *series {
	key := strings.Join(values, "\xff")
	s, ok := f.series[key]
	if !ok {
		s = &series{values: values}
		if f.typ == "histogram" {
			s.counts = make([]uint64, len(Buckets))
		}
		f.series[key] = s
	}
	return s
}

func (s *series) observe(v float64) {
	if i, found := slices.BinarySearch(Buckets, v); found || i < len(Buckets) {
		s.counts[i]++ // bucket i is the first whose bound is ≥ v
	}
	s.sum += v
	s.count++
}

// Observe counts one record; only ADDs are counted.
func (m *Metrics) Observe(r logrec.Record) {
	if r.Verb != "ADD" {
		return
	}
	var ns []string
	if m.namespaces {
		ns = []string{waitstats.Namespace(r)}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.adds.get(append([]string{string(r.Outcome)}, ns...)...).value++
	switch r.Outcome {
	case logrec.Timeout:
		m.timeouts.get("fail").value++
	case logrec.TimeoutAllowed:
		m.timeouts.get("allow").value++
	}
	if !waitstats.Gated(r) {
		return
	}
	m.wait.get(ns...).observe(logrec.MS(r.TotalMS).Seconds())
	for _, c := range r.Conditions {
		k := waitstats.Kind(c.Name)
		switch {
		case k == "":
		case c.Ready:
			m.conds.get(k).observe(logrec.MS(c.AfterMS).Seconds())
		default:
			m.unmet.get(k).value++
		}
	}
}

// ObserveLine parses one line of the log and counts it.
func (m *Metrics) ObserveLine(line []byte) {
	r, err := logrec.Parse(line)
	if err != nil {
		m.mu.Lock()
		m.badLines.get().value++
		m.mu.Unlock()
		return
	}
	m.Observe(r)
}

// WriteText writes every family in Prometheus' text exposition format 0.0.4, series sorted.
func (m *Metrics) WriteText(w io.Writer) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	bw := bufio.NewWriter(w)
	for _, f := range m.families {
		if len(f.series) == 0 {
			continue
		}
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s %s\n", f.name, escapeHelp(f.help), f.name, f.typ)
		keys := make([]string, 0, len(f.series))
		for k := range f.series {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			s := f.series[k]
			if f.typ == "counter" {
				fmt.Fprintf(bw, "%s%s %s\n", f.name, labels(f.labels, s.values, ""), num(s.value))
				continue
			}
			var cum uint64
			for i, b := range Buckets {
				cum += s.counts[i]
				fmt.Fprintf(bw, "%s_bucket%s %d\n", f.name, labels(f.labels, s.values, num(b)), cum)
			}
			fmt.Fprintf(bw, "%s_bucket%s %d\n", f.name, labels(f.labels, s.values, "+Inf"), s.count)
			fmt.Fprintf(bw, "%s_sum%s %s\n", f.name, labels(f.labels, s.values, ""), num(s.sum))
			fmt.Fprintf(bw, "%s_count%s %d\n", f.name, labels(f.labels, s.values, ""), s.count)
		}
	}
	return bw.Flush()
}

// ContentType is the text format's, as Prometheus expects it.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ContentType)
		m.WriteText(w)
	})
}

func labels(names, values []string, le string) string {
	if len(names) == 0 && le == "" {
		return ""
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(n + `="` + escapeValue(values[i]) + `"`)
	}
	if le != "" {
		if len(names) > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`le="` + le + `"`)
	}
	b.WriteByte('}')
	return b.String()
}

func num(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

var (
	valueEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func escapeValue(s string) string { return valueEscaper.Replace(s) }
func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
