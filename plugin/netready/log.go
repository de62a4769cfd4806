package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/gate"
)

const levelWarn = slog.LevelWarn

// record collects what one invocation logs: exactly one JSON line, written
// when the verb is done.
type record struct {
	p       *plugin
	verb    string
	args    *skel.CmdArgs
	logFile string
	pod     string   // namespace/name, when the runtime said
	secrets []string // annotation values the log must not show
	outcome string
	reason  string
	level   slog.Level
	spec    *config.Spec
	report  *gate.Report
	err     error
}

func (p *plugin) newRecord(verb string, args *skel.CmdArgs) *record {
	return &record{p: p, verb: verb, args: args, outcome: "ok"}
}

func (r *record) setPod(pod config.Pod) {
	if pod.Namespace != "" || pod.Name != "" {
		r.pod = pod.Namespace + "/" + pod.Name
	}
	// Annotation values are the pod owner's, and the node's log may be read
	// by others: only probe URLs (already without userinfo) may appear.
	for k, v := range pod.Annotations {
		if k != config.AnnotationProbes && v != "" {
			r.secrets = append(r.secrets, v)
		}
	}
}

// redact removes annotation values from a message bound for the log. The
// runtime still gets the whole message: the pod's owner wrote those values.
func (r *record) redact(msg string) string {
	for _, v := range r.secrets {
		msg = strings.ReplaceAll(msg, v, "<redacted>")
	}
	return msg
}

// fail notes err (if any) as the invocation's outcome and returns it.
func (r *record) fail(err error) error {
	if err == nil {
		return nil
	}
	r.err = err
	r.level = slog.LevelError
	if r.outcome == "ok" {
		r.outcome = "error"
	}
	return err
}

// condLog is one condition as logged and as put in an error's details.
type condLog struct {
	Name     string  `json:"name"`
	Ready    bool    `json:"ready"`
	AfterMS  float64 `json:"after_ms,omitempty"`
	Attempts int     `json:"attempts"`
	Error    string  `json:"error,omitempty"`
}

// probeLog says where a probe came from: config, rules[N] or annotation.
type probeLog struct {
	URL    string `json:"url"`
	Origin string `json:"origin"`
}

// conditionLogs lists the conditions; after_ms counts from start (the
// plugin's), like total_ms, so both can be laid on one clock.
func conditionLogs(r *gate.Report, start time.Time) []condLog {
	offset := r.Start.Sub(start)
	out := make([]condLog, 0, len(r.Conditions))
	for _, c := range r.Conditions {
		l := condLog{Name: c.Name, Ready: c.Ready, Attempts: c.Attempts}
		if c.Ready {
			l.AfterMS = ms(offset + c.After)
		} else if c.LastErr != nil {
			l.Error = c.LastErr.Error()
		}
		out = append(out, l)
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (r *record) write() {
	w, closeFn := r.output()
	defer closeFn()
	log := slog.New(slog.NewJSONHandler(w, nil))
	attrs := []slog.Attr{
		slog.String("verb", r.verb),
		slog.String("outcome", r.outcome),
		slog.Float64("total_ms", ms(time.Since(r.p.start))),
	}
	if r.args != nil {
		attrs = append(attrs, slog.String("container", r.args.ContainerID))
	}
	if r.pod != "" {
		attrs = append(attrs, slog.String("pod", r.pod))
	}
	if r.reason != "" {
		attrs = append(attrs, slog.String("reason", r.reason))
	}
	if s := r.spec; s != nil && !s.Skipped { // a skipped pod's rule and probes do not apply
		if s.Rule != "" {
			attrs = append(attrs, slog.String("rule", s.Rule))
		}
		if s.AnnotationsIgnored {
			attrs = append(attrs, slog.String("annotations", "ignored: annotations.allow is false in the netready config"))
		}
		if len(s.Probes) > 0 {
			probes := make([]probeLog, len(s.Probes))
			for i, p := range s.Probes {
				probes[i] = probeLog{p.URL, p.Origin}
			}
			attrs = append(attrs, slog.Any("probes", probes))
		}
	}
	if r.report != nil {
		attrs = append(attrs, slog.Any("conditions", conditionLogs(r.report, r.p.start)))
		if len(r.report.Notes) > 0 {
			attrs = append(attrs, slog.Any("notes", r.report.Notes))
		}
	}
	if r.err != nil {
		var e *types.Error
		if errors.As(r.err, &e) {
			attrs = append(attrs, slog.Uint64("code", uint64(e.Code)), slog.String("error", r.redact(e.Msg)))
		} else {
			attrs = append(attrs, slog.String("error", r.redact(r.err.Error())))
		}
	}
	log.LogAttrs(context.Background(), r.level, "netready "+r.verb, attrs...)
}

// output opens the log file for appending, or falls back to stderr (which
// the runtime keeps in its own log) when there is none or it cannot open.
func (r *record) output() (io.Writer, func()) {
	if r.logFile == "" {
		return r.p.stderr, func() {}
	}
	f, err := os.OpenFile(r.logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		slog.New(slog.NewJSONHandler(r.p.stderr, nil)).Warn("netready: cannot open logFile, logging to stderr", "error", err.Error())
		return r.p.stderr, func() {}
	}
	return f, func() { f.Close() }
}
