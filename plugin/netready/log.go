package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/netready/netready/internal/logfile"
	"github.com/netready/netready/internal/logrec"
	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/gate"
)

// record collects what one invocation logs: at most one JSON line, written
// when the verb is done.
type record struct {
	p       *plugin
	verb    string
	args    *skel.CmdArgs
	logFile string
	pod     string     // namespace/name, when the runtime said
	podConf config.Pod // whose annotation values the log must not show
	outcome logrec.Outcome
	reason  string
	level   string
	spec    *config.Spec
	report  *gate.Report
	err     error
}

func (p *plugin) newRecord(verb string, args *skel.CmdArgs) *record {
	return &record{p: p, verb: verb, args: args, outcome: logrec.OK, level: logrec.LevelInfo}
}

// maxLogFileSearch bounds the stdin searched for a logFile apart from the
// config's validation: a real config, prevResult and annotations included,
// is well under it, and hostile input must not cost a second full parse.
const maxLogFileSearch = 1 << 20

// logFileOf is the config's logFile, read apart from the config's
// validation: a config error (or a missing prevResult) is worth a line, and
// on K3s stderr is lost when the plugin fails. Only an absolute path counts,
// the rule config.Parse applies.
func logFileOf(stdin []byte) string {
	if len(stdin) > maxLogFileSearch {
		return ""
	}
	var c struct {
		LogFile string `json:"logFile"`
	}
	if json.Unmarshal(stdin, &c) != nil || !filepath.IsAbs(c.LogFile) {
		return ""
	}
	return c.LogFile
}

func (r *record) setPod(pod config.Pod) {
	if pod.Namespace != "" || pod.Name != "" {
		r.pod = pod.Namespace + "/" + pod.Name
	}
	r.podConf = pod
}

// redact removes the pod's annotation values from a message bound for the
// log (config.Pod.Redact). The runtime still gets the whole message: the
// pod's owner wrote those values.
func (r *record) redact(msg string) string {
	return r.podConf.Redact(msg)
}

// fail notes err (if any) as the invocation's outcome and returns it.
func (r *record) fail(err error) error {
	if err == nil {
		return nil
	}
	r.err = err
	r.level = logrec.LevelError
	if r.outcome == logrec.OK {
		r.outcome = logrec.Error
	}
	return err
}

// conditionLogs lists the conditions; after_ms counts from start (the
// plugin's), like total_ms, so both can be laid on one clock.
func conditionLogs(r *gate.Report, start time.Time) []logrec.Condition {
	offset := r.Start.Sub(start)
	out := make([]logrec.Condition, 0, len(r.Conditions))
	for _, c := range r.Conditions {
		l := logrec.Condition{Name: c.Name, Ready: c.Ready, Attempts: c.Attempts}
		if c.Ready {
			l.AfterMS = logrec.Millis(offset + c.After)
		} else if c.LastErr != nil {
			l.Error = c.LastErr.Error()
		}
		if !c.Ready && c.LastCause != nil {
			l.Cause = c.LastCause.Error()
		}
		out = append(out, l)
	}
	return out
}

// quiet reports whether the invocation leaves no line: a STATUS or GC that
// succeeded. containerd calls STATUS every 5 s under cniVersion 1.1.0,
// some 17,000 lines a day that say nothing; their failures say much.
func (r *record) quiet() bool {
	return (r.verb == "STATUS" || r.verb == "GC") && r.err == nil
}

// line is the record as the log shows it.
func (r *record) line() logrec.Record {
	l := logrec.Record{
		Time:    time.Now(),
		Level:   r.level,
		Msg:     "netready " + r.verb,
		Verb:    r.verb,
		Outcome: r.outcome,
		TotalMS: logrec.Millis(time.Since(r.p.start)),
		Pod:     r.pod,
		Reason:  r.reason,
	}
	if r.args != nil {
		l.Container = r.args.ContainerID
	}
	if s := r.spec; s != nil && !s.Skipped { // a skipped pod's rule and probes do not apply
		l.Rule = s.Rule
		if s.AnnotationsIgnored {
			l.Annotations = "ignored: annotations.allow is false in the netready config"
		}
		for _, p := range s.Probes {
			l.Probes = append(l.Probes, logrec.Probe{URL: p.URL, Origin: p.Origin})
		}
	}
	if r.report != nil {
		l.Conditions = conditionLogs(r.report, r.p.start)
		l.Notes = r.report.Notes
	}
	if r.err != nil {
		var e *types.Error
		if errors.As(r.err, &e) {
			l.Code, l.Error = e.Code, r.redact(e.Msg)
		} else {
			l.Error = r.redact(r.err.Error())
		}
	}
	return l
}

// write appends the line to logFile (kept bounded there), or to stderr,
// which the runtime keeps in its own log, when the config names none.
func (r *record) write() {
	// write is deferred by every verb: a panic (a bug) passes through here.
	// Leave its line, then let it go on to crash with its stack.
	if v := recover(); v != nil {
		r.outcome = logrec.Error
		r.fail(fmt.Errorf("netready panicked, a bug (please report it with the stack on stderr): %v", v))
		defer panic(v)
	}
	if r.quiet() {
		return
	}
	if r.logFile == "" && r.args != nil { // the config did not parse, or names none
		r.logFile = logFileOf(r.args.StdinData)
	}
	b, err := r.line().Marshal()
	if err != nil { // strings, numbers and a time: cannot happen, but say so
		fmt.Fprintf(r.p.stderr, "netready %s: cannot encode its log record: %v\n", r.verb, err)
		return
	}
	if r.logFile == "" {
		_, _ = r.p.stderr.Write(b)
		return
	}
	logfile.File{Path: r.logFile}.Write(b, r.p.stderr)
}

// warmLog readies the log line's encoding, discarding a line like the one
// a wait ends with: encoding/json builds its encoders for the record's
// types on first use, and the code it runs is paged in. A waiting ADD
// calls it when its wait begins (podcheck.OnWait), so that the line costs
// little when the path opens and every waiting ADD on the node answers at
// once.
func warmLog() {
	_, _ = logrec.Record{
		Time: time.Now(), Level: logrec.LevelInfo, Outcome: logrec.Ready, TotalMS: 1.5,
		Probes:     []logrec.Probe{{URL: "tcp://", Origin: "config"}},
		Conditions: []logrec.Condition{{Name: "gateway", Ready: true, AfterMS: 1.5, Attempts: 1}},
		Notes:      []string{"warm"},
	}.Marshal()
}
