// Package waitstats sums up netready's log: how long pods waited for their network, by namespace
// and by kind of condition, how ADDs ended, which pods waited longest, and whether the wait stays
// above the 2 s past which the CNI setup deserves a look. Pure: records in, figures out.
package waitstats

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/netready/netready/internal/logrec"
)

// Slow is the wait past which the operator should look at the CNI setup: the seed's "about 2 s".
const Slow = 2 * time.Second

// Kinds are the condition kinds, in the order tables list them.
var Kinds = []string{"link", "address", "route", "gateway", "icmp", "tcp", "dns", "http"}

// Kind is the kind of a condition, from the name the gate gives it ("link eth0", "address … on
// eth0", "IPv4 default route", "route to …", "gateway …", or a probe URL); "" when unknown.
func Kind(name string) string {
	if scheme, _, ok := strings.Cut(name, "://"); ok {
		switch scheme {
		case "icmp", "tcp", "dns":
			return scheme
		case "http", "https":
			return "http"
		}
		return ""
	}
	switch {
	case strings.HasPrefix(name, "link "):
		return "link"
	case strings.HasPrefix(name, "address "):
		return "address"
	case strings.HasPrefix(name, "route to "), strings.HasSuffix(name, " default route"):
		return "route"
	case strings.HasPrefix(name, "gateway "):
		return "gateway"
	}
	return ""
}

// Gated reports whether an ADD record ran the gate, so that its total_ms is a wait: ready, timed
// out (either way), failed, interrupted, or ended because the pod was deleted. Skipped pods and errors before the gate are not waits.
func Gated(r logrec.Record) bool {
	if r.Verb != "ADD" {
		return false
	}
	switch r.Outcome {
	case logrec.Ready, logrec.Timeout, logrec.TimeoutAllowed, logrec.Failed, logrec.Interrupted, logrec.PodDeleted:
		return true
	}
	return false
}

// Namespace is the namespace of the record's pod, "-" when the runtime named none.
func Namespace(r logrec.Record) string {
	if ns, _, ok := strings.Cut(r.Pod, "/"); ok && ns != "" {
		return ns
	}
	return "-"
}

// Dist is a distribution of waits.
type Dist struct {
	N                  int
	P50, P90, P99, Max time.Duration
}

// NewDist is the distribution of ds (nearest-rank percentiles); ds is sorted in place.
func NewDist(ds []time.Duration) Dist {
	if len(ds) == 0 {
		return Dist{}
	}
	slices.Sort(ds)
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(ds)))) - 1
		return ds[max(i, 0)]
	}
	return Dist{N: len(ds), P50: rank(0.50), P90: rank(0.90), P99: rank(0.99), Max: ds[len(ds)-1]}
}

// Pod is one ADD of the slowest.
type Pod struct {
	Pod     string
	Time    time.Time
	Wait    time.Duration
	Outcome logrec.Outcome
	Slowest string // the condition that held last, or the first unmet one
}

// Summary is what `netready stats` prints.
type Summary struct {
	Records     int                    // records read (every verb)
	ADDs        int                    // ADD records
	Outcomes    map[logrec.Outcome]int // of ADDs
	Wait        Dist                   // gated ADDs
	ByNamespace map[string]Dist        // gated ADDs by pod namespace
	ByKind      map[string]Dist        // ready conditions by kind: the time each took to hold
	Slowest     []Pod                  // gated ADDs, longest wait first
	From, To    time.Time              // the first and last record's time
}

// Summarize sums up recs, keeping the n slowest pods.
func Summarize(recs []logrec.Record, n int) Summary {
	s := Summary{Records: len(recs), Outcomes: map[logrec.Outcome]int{},
		ByNamespace: map[string]Dist{}, ByKind: map[string]Dist{}}
	var all []time.Duration
	byNS := map[string][]time.Duration{}
	byKind := map[string][]time.Duration{}
	var pods []Pod
	for _, r := range recs {
		if s.From.IsZero() || r.Time.Before(s.From) {
			s.From = r.Time
		}
		if r.Time.After(s.To) {
			s.To = r.Time
		}
		if r.Verb != "ADD" {
			continue
		}
		s.ADDs++
		s.Outcomes[r.Outcome]++
		if !Gated(r) {
			continue
		}
		w := logrec.MS(r.TotalMS)
		all = append(all, w)
		ns := Namespace(r)
		byNS[ns] = append(byNS[ns], w)
		for _, c := range r.Conditions {
			if k := Kind(c.Name); k != "" && c.Ready {
				byKind[k] = append(byKind[k], logrec.MS(c.AfterMS))
			}
		}
		pods = append(pods, Pod{Pod: cmp.Or(r.Pod, r.Container, "-"), Time: r.Time, Wait: w,
			Outcome: r.Outcome, Slowest: slowestCondition(r)})
	}
	s.Wait = NewDist(all)
	for ns, ds := range byNS {
		s.ByNamespace[ns] = NewDist(ds)
	}
	for k, ds := range byKind {
		s.ByKind[k] = NewDist(ds)
	}
	slices.SortStableFunc(pods, func(a, b Pod) int { return cmp.Compare(b.Wait, a.Wait) })
	s.Slowest = pods[:min(n, len(pods))]
	return s
}

// slowestCondition names what the pod waited for: the first unmet condition, or the one that
// held last.
func slowestCondition(r logrec.Record) string {
	var last logrec.Condition
	for _, c := range r.Conditions {
		if !c.Ready {
			return c.Name + " (not ready: " + cmp.Or(c.Error, "no answer") + ")"
		}
		if c.AfterMS >= last.AfterMS {
			last = c
		}
	}
	return last.Name
}

// Verdict is the one line that says whether the wait stays above Slow, and what to do: by the
// overall p50 and p90, naming the namespaces whose own p50 is above, and the timeouts.
func (s Summary) Verdict() string {
	if s.Wait.N == 0 {
		return "no gated ADD in the log: nothing to judge"
	}
	var v string
	switch {
	case s.Wait.P50 > Slow:
		v = fmt.Sprintf("ABOVE %v: half the pods waited more than %v (p50 %v over %d ADDs): look at the CNI setup (the slowest conditions below; README, Failure modes)",
			Slow, Slow, dur(s.Wait.P50), s.Wait.N)
	case s.Wait.P90 > Slow:
		v = fmt.Sprintf("mostly below %v, but at least 1 of 10 pods waits longer (p90 %v over %d ADDs): see the slowest pods below",
			Slow, dur(s.Wait.P90), s.Wait.N)
	default:
		v = fmt.Sprintf("below %v: p90 %v over %d ADDs", Slow, dur(s.Wait.P90), s.Wait.N)
	}
	var slowNS []string
	for ns, d := range s.ByNamespace {
		if d.P50 > Slow && len(s.ByNamespace) > 1 {
			slowNS = append(slowNS, fmt.Sprintf("%s (p50 %v)", ns, dur(d.P50)))
		}
	}
	slices.Sort(slowNS)
	if len(slowNS) > 0 {
		v += "; ABOVE " + Slow.String() + " in " + strings.Join(slowNS, ", ")
	}
	if n := s.Outcomes[logrec.Timeout] + s.Outcomes[logrec.TimeoutAllowed]; n > 0 {
		v += fmt.Sprintf("; %d timed out", n)
	}
	return v
}

// WriteTable prints the summary as aligned tables.
func (s Summary) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if s.Records > 0 {
		fmt.Fprintf(tw, "records: %d (%d ADD) from %s to %s\n\n", s.Records, s.ADDs,
			s.From.UTC().Format(time.RFC3339), s.To.UTC().Format(time.RFC3339))
	} else {
		fmt.Fprintf(tw, "records: 0\n\n")
	}
	fmt.Fprintln(tw, "OUTCOME\tADDS\t")
	outcomes := make([]logrec.Outcome, 0, len(s.Outcomes))
	for o := range s.Outcomes {
		outcomes = append(outcomes, o)
	}
	slices.Sort(outcomes)
	for _, o := range outcomes {
		fmt.Fprintf(tw, "%s\t%d\t\n", o, s.Outcomes[o])
	}
	fmt.Fprintln(tw)
	distRow := func(name string, d Dist) {
		fmt.Fprintf(tw, "%s\t%d\t%v\t%v\t%v\t%v\t\n", name, d.N, dur(d.P50), dur(d.P90), dur(d.P99), dur(d.Max))
	}
	fmt.Fprintln(tw, "WAIT BY NAMESPACE\tADDS\tP50\tP90\tP99\tMAX\t")
	namespaces := make([]string, 0, len(s.ByNamespace))
	for ns := range s.ByNamespace {
		namespaces = append(namespaces, ns)
	}
	slices.Sort(namespaces)
	for _, ns := range namespaces {
		distRow(ns, s.ByNamespace[ns])
	}
	distRow("all", s.Wait)
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "CONDITION HELD AFTER\tCOUNT\tP50\tP90\tP99\tMAX\t")
	for _, k := range Kinds {
		if d, ok := s.ByKind[k]; ok {
			distRow(k, d)
		}
	}
	fmt.Fprintln(tw)
	if len(s.Slowest) > 0 {
		fmt.Fprintln(tw, "SLOWEST PODS\tWAIT\tOUTCOME\tAT\tWAITED FOR\t")
		for _, p := range s.Slowest {
			fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%s\t\n", p.Pod, dur(p.Wait), p.Outcome, p.Time.UTC().Format(time.RFC3339), p.Slowest)
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintln(tw, "verdict: "+s.Verdict())
	return tw.Flush()
}

// dur rounds a duration for a table: µs below a millisecond, 0.1 ms below a second, else ms.
func dur(d time.Duration) time.Duration {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond)
	case d < time.Second:
		return d.Round(100 * time.Microsecond)
	default:
		return d.Round(time.Millisecond)
	}
}
