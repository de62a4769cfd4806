package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
	"unsafe"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	cniversion "github.com/containernetworking/cni/pkg/version"
	"golang.org/x/sys/unix"

	"github.com/netready/netready/internal/logrec"
	"github.com/netready/netready/internal/threadns"
	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/gate"
	"github.com/netready/netready/pkg/podcheck"
	"github.com/netready/netready/pkg/podns"
	"github.com/netready/netready/pkg/podwatch"
)

// checkBudget caps CHECK: the runtime asks whether the network still works,
// it does not wait for it to come up.
const checkBudget = 2 * time.Second

type plugin struct {
	start  time.Time
	stderr io.Writer // where the log goes when the config names no logFile
}

// add gates the pod: parse and resolve the pod's spec, wait, pass the result on.
func (p *plugin) add(args *skel.CmdArgs) error {
	rec := p.newRecord("ADD", args)
	defer rec.write()
	conf, prev, pod, spec, err := prepare(rec, args)
	if err != nil {
		return rec.fail(err)
	}
	// The answer is the previous plugin's result, untouched, in the
	// list's version. It is encoded before the gate runs, and the log
	// line's encoder readied once the gate has to wait (warmLog): the
	// first JSON encoding in a process is costly (~0.6 ms of CPU on this
	// project's VM, encoding/json building its encoders), and after a
	// path opens every waiting ADD on the node answers at once.
	answer, err := encodeResult(conf.PrevResult, conf.CNIVersion)
	if err != nil {
		return rec.fail(err)
	}
	if !spec.Skipped {
		if err := p.gate(rec, args, conf.Name, spec, prev, spec.Timeout, conf.PodWatch, pod); err != nil {
			return rec.fail(err)
		}
	}
	return writeAnswer(answer)
}

// writeAnswer writes the answer to stdout with raw write(2)s: an ordinary
// wrapper would wake the Go runtime's sysmon as the ADD answers, which then
// polls every 20 µs until the process exits (internal/logfile's appendLine
// says more). A stdout that would block (non-blocking, full) gets the rest
// through os.Stdout, which waits.
func writeAnswer(b []byte) error {
	for len(b) > 0 {
		n, _, errno := unix.RawSyscall(unix.SYS_WRITE, 1, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch errno {
		case 0:
			b = b[n:]
		case unix.EINTR:
		case unix.EAGAIN:
			_, err := os.Stdout.Write(b)
			return err
		default:
			return &os.PathError{Op: "write", Path: os.Stdout.Name(), Err: errno}
		}
	}
	return nil
}

// encodeResult is what types.PrintResult prints: result in version, by
// the library's own PrintTo.
func encodeResult(result types.Result, version string) ([]byte, error) {
	r, err := result.GetAsVersion(version)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := r.PrintTo(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// check runs the gate again with a short budget.
func (p *plugin) check(args *skel.CmdArgs) error {
	rec := p.newRecord("CHECK", args)
	defer rec.write()
	conf, prev, _, spec, err := prepare(rec, args)
	if err != nil || spec.Skipped {
		return rec.fail(err)
	}
	// No podWatch: CHECK's budget is shorter than the watch's start.
	return rec.fail(p.gate(rec, args, conf.Name, spec, prev, min(spec.Timeout, checkBudget), nil, config.Pod{}))
}

// del always succeeds: netready created nothing, so there is nothing to
// remove, and a failing DEL would only keep the runtime from cleaning up.
func (p *plugin) del(args *skel.CmdArgs) error {
	rec := p.newRecord("DEL", args)
	defer rec.write()
	if conf, err := config.Parse(args.StdinData); err == nil {
		rec.logFile = conf.LogFile
		if pod, err := conf.Pod(args.Args); err == nil {
			rec.setPod(pod)
		}
	}
	return nil
}

// status succeeds when the configuration is valid.
func (p *plugin) status(args *skel.CmdArgs) error {
	rec := p.newRecord("STATUS", args)
	defer rec.write()
	_, err := config.Parse(args.StdinData)
	return rec.fail(err)
}

// gc succeeds: netready keeps no state to collect. (A GC that failed
// would leave a line; one that succeeds leaves none.)
func (p *plugin) gc(args *skel.CmdArgs) error {
	rec := p.newRecord("GC", args)
	defer rec.write()
	return nil
}

// prepare reads what ADD and CHECK gate on: the plugin object and the
// previous plugin's result (parse), then the pod from CNI_ARGS and its spec
// from the config and the pod's annotations. A skipped pod's record says so.
func prepare(rec *record, args *skel.CmdArgs) (*config.Conf, *current.Result, config.Pod, config.Spec, error) {
	conf, prev, err := parse(args.StdinData)
	if err != nil {
		return nil, nil, config.Pod{}, config.Spec{}, err
	}
	rec.logFile = conf.LogFile
	pod, err := conf.Pod(args.Args)
	if err != nil {
		return nil, nil, pod, config.Spec{}, err
	}
	rec.setPod(pod)
	if err := notOwnNetNS(args.Netns); err != nil {
		return nil, nil, pod, config.Spec{}, err
	}
	spec, err := conf.Resolve(pod)
	rec.spec = &spec
	if err == nil && spec.Skipped {
		rec.outcome, rec.reason = logrec.Skipped, spec.SkipReason
	}
	return conf, prev, pod, spec, err
}

// notOwnNetNS fails when CNI_NETNS is the plugin's own netns: gating it
// would probe from the node itself. It is the check skel makes after ADD and
// DEL (cni's ns.CheckNetNS), made before the wait and without its lookup of
// /proc/PID/task/TID, which makes the process costlier to reap
// (internal/threadns); main turns skel's off (CNI_NETNS_OVERRIDE).
func notOwnNetNS(path string) error {
	own, err := threadns.IsSelf(path)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, "get plugin's netns failed", err.Error())
	}
	if own {
		return types.NewError(types.ErrInvalidNetNS, "CNI_NETNS "+path+" is the plugin's own netns, not a pod's", "")
	}
	return nil
}

// parse reads the plugin object and the previous plugin's result.
func parse(stdin []byte) (*config.Conf, *current.Result, error) {
	conf, err := config.Parse(stdin)
	if err != nil {
		return nil, nil, err
	}
	if conf.RawPrevResult == nil {
		return nil, nil, types.NewError(types.ErrInvalidNetworkConfig,
			"netready must be chained after the plugin that creates the pod's interface: no prevResult in its config; put it last in the plugins list", "")
	}
	if err := cniversion.ParsePrevResult(&conf.NetConf); err != nil {
		return nil, nil, prevResultError(conf.Name, types.NewError(types.ErrDecodingFailure, err.Error(), ""))
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, nil, prevResultError(conf.Name, types.NewError(types.ErrDecodingFailure, err.Error(), ""))
	}
	return conf, prev, nil
}

// gate waits until the pod's network works or budget (counted from the
// plugin's start) runs out, or, with podWatch, until the API server says
// the pod (k8sPod) is gone. network is the conflist's name, for messages.
func (p *plugin) gate(rec *record, args *skel.CmdArgs, network string, spec config.Spec, prev *current.Result, budget time.Duration,
	pw *config.PodWatch, k8sPod config.Pod) error {
	pod, err := podcheck.PodFromResult(args.Netns, args.IfName, prev)
	if err != nil {
		return prevResultError(network, err)
	}
	ctx, cancel := context.WithDeadline(context.Background(), p.start.Add(budget))
	defer cancel()
	// What ends a wait early besides the pod's netns going away: the
	// runtime's signal, and the API server saying the pod is gone.
	watch := newPodWatcher(pw, k8sPod, p.start)
	// The process exits right after this: what the wait started is left
	// for the exit to close.
	report, err := podcheck.RunThenExit(ctx, spec, pod, endOnSignal, watch.End, podcheck.OnWait(warmLog))
	if note := watch.Note(); note != "" && report != nil {
		report.Notes = append(report.Notes, note)
	}
	switch {
	case podns.IsBadNetNS(err):
		return types.NewError(types.ErrInvalidNetNS, "CNI_NETNS: "+err.Error(), "")
	case err != nil:
		// Netlink, sockets, watchers: trouble on this node, not a bad
		// netns from the runtime; the kubelet retries the sandbox.
		return types.NewError(types.ErrInternal, "netready could not check the pod's network: "+err.Error(), "")
	}
	rec.report = report
	waited := time.Since(p.start).Round(time.Millisecond)
	var gone *podwatch.Gone
	switch {
	case report.Ready():
		rec.outcome = logrec.Ready
		return nil
	case gate.IsPermanent(report.Err):
		// The pod's link vanished, its address failed DAD: waiting longer
		// cannot help. The condition at fault is in the summary.
		rec.outcome = logrec.Failed
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("pod network cannot become ready (after %v): %s", waited, report.Summary()), details(report, p.start))
	case errors.As(report.Err, &gone):
		// Neither the kubelet nor containerd stops an ADD whose pod was
		// deleted: without this the pod would linger until the timeout.
		rec.outcome = logrec.PodDeleted
		return types.NewError(CodePodDeleted,
			fmt.Sprintf("stopped waiting after %v: %v; its sandbox is no longer wanted; unmet: %s", waited, gone, report.Summary()), details(report, p.start))
	case report.Err != nil:
		// A signal from the runtime, the netns removed under us.
		rec.outcome = logrec.Interrupted
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("stopped waiting after %v: %v; unmet: %s", waited, report.Err, report.Summary()), details(report, p.start))
	}
	// Only now, on the way out of a wait that failed: a firewall's reject
	// is worth a sentence of its own, the operator's fix is not netready's.
	hint := firewallHint(report, nodeLocal(pod.Gateways))
	if spec.OnTimeout == config.Allow {
		rec.outcome, rec.level = logrec.TimeoutAllowed, logrec.LevelWarn
		if hint != "" {
			report.Notes = append(report.Notes, hint)
		}
		return nil
	}
	if hint != "" {
		hint += "; "
	}
	rec.outcome = logrec.Timeout
	return types.NewError(types.ErrTryAgainLater,
		fmt.Sprintf("pod network not ready after %v: %s; %s%s", waited, report.Summary(), hint, reproduce(args.Netns, network, rec.pod)),
		details(report, p.start))
}

// details is the report as JSON, for the error's details field.
func details(r *gate.Report, start time.Time) string {
	b, err := json.Marshal(conditionLogs(r, start))
	if err != nil {
		return ""
	}
	return string(b)
}
