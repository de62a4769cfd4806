package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/types/create"

	"github.com/netready/netready/internal/logrec"
	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/gate"
	"github.com/netready/netready/pkg/podcheck"
	"github.com/netready/netready/pkg/podns"
)

// Exit codes of the command-line tool.
const (
	exitReady    = 0
	exitNotReady = 1
	exitUsage    = 2 // the command line or the config is wrong: fix it and run again
	exitCannot   = 3 // the check could not run here: no such netns, netlink or socket errors
)

const usage = `netready: a chained CNI plugin that holds ADD until the pod's network works.

Run by a container runtime (CNI_COMMAND set), it speaks CNI. Run by hand:

  netready check --netns PATH --conf FILE [--pod NS/NAME] [--annotation K=V ...]
                 [--prev-result FILE] [--timeout DUR]
      Wait, as ADD would, until the netns's network is ready, and print each
      condition and when it held. FILE is a conflist (its netready entry is
      used) or a netready plugin object. The links, addresses and gateways
      come from --prev-result (a CNI result, e.g. from the runtime's cache
      under /var/lib/cni/results) or else from the netns itself. Exit 0
      ready, 1 not ready, 2 usage or config error, 3 the check could not
      run (a file that cannot be read, no such netns, a netlink or socket
      error).
  netready explain --conf FILE [--pod NS/NAME] [--annotation K=V ...] [--json]
      Print the spec netready would enforce for that pod (probes and where
      each came from, timeout, onTimeout, gateway, defaultRoute, skipped or
      not and why) without touching any network. Exit 0 when the config and
      annotations are valid, 2 with the error otherwise, 3 when FILE cannot
      be read.
  netready stats [--log FILE] [--since DUR] [--top N]
      How long pods waited for their network, from netready's log (default
      /var/log/netready/netready.log) and its rotated FILE.1, FILE.2 …:
      p50/p90/p99/max by namespace and by kind of condition, how ADDs ended,
      the slowest pods, and whether the wait stays above 2 s. Exit 0, 2 for
      usage, 3 when the log cannot be read.
  netready install [--probe URL ...] [--timeout DUR] [--on-timeout fail|allow]
                   [--skip-namespace NS ...] [--log-file PATH] [--mode owned|flannel-cni-conf]
                   [--binary PATH] [--bin-dir DIR] [--data-dir DIR] [--root DIR]
                   [--no-pod-watch] [--restart] [--dry-run]
      Chain netready last in K3s's flannel chain on this node (as root). The
      default owned mode writes K3s's live chain with netready last to
      <data-dir>/agent/etc/cni/net.d/00-netready.conflist, which containerd
      reads first and picks up without a restart; it installs the binary
      into K3s's CNI bin dir. --skip-namespace defaults to kube-system (''
      skips none); --log-file defaults to /var/log/netready/netready.log
      ('' logs to stderr, which K3s loses); --data-dir defaults to the
      running k3s's. podWatch (a waiting ADD ends once the API server says
      its pod was deleted) uses the kubelet's credentials from
      <data-dir>/agent; --no-pod-watch leaves it out. A second identical
      run changes nothing. It ends by
      checking that the first conflist containerd reads chains netready.
      Exit 0 done, 1 failed or refused (nothing changed unless it says so;
      also a --root that is not a directory), 2 usage error, 3 files in place but netready not in containerd's chain
      (flannel-cni-conf mode before a restart, or where K3s ignores it).
  netready uninstall [--bin-dir DIR] [--data-dir DIR] [--root DIR] [--restart] [--dry-run]
      Remove exactly what install made (its record is
      <data-dir>/agent/etc/cni/netready-install.state). Exit 0 done, 1
      failed or refused, 2 usage error.
  netready agent --config FILE [--cni-conf-dir DIR] [--cni-bin-dir DIR] [--log FILE]
                 [--metrics-addr HOST:PORT] [--metrics-namespaces]
      The DaemonSet's mode (deploy/): copy this binary into the CNI bin dir,
      keep 00-netready.conflist (the primary chain with FILE's netready
      object last) in step with the primary conflist, re-created within a
      second when it changes or vanishes; serve /metrics of the waits read
      from --log; on SIGTERM remove 00-netready.conflist only. Refuses a
      primary that already chains netready and a conf dir another CNI owns
      (Cilium's exclusive mode, a file that sorts before netready's).
      Defaults: K3s's dirs, --log /var/log/netready/netready.log,
      --metrics-addr :9725. Exit 0 after SIGTERM, 2 for usage or an invalid
      FILE, 3 when it cannot run (FILE unreadable, a dir missing, the
      metrics address taken).
  netready version
      Print the version (also --version).
  netready help
      Print this text.
`

func runCLI(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "check":
		return cliCheck(args[1:], stdout, stderr)
	case "explain":
		return cliExplain(args[1:], stdout, stderr)
	case "stats":
		return cliStats(args[1:], stdout, stderr, time.Now())
	case "install":
		return cliInstall(args[1:], stdout, stderr)
	case "uninstall":
		return cliUninstall(args[1:], stdout, stderr)
	case "agent":
		return cliAgent(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "netready %s (CNI %s)\n", version, strings.Join(supported.SupportedVersions(), ", "))
		return exitReady
	case "help", "--help", "-help", "-h":
		fmt.Fprint(stdout, usage)
		return exitReady
	}
	fmt.Fprintf(stderr, "netready: unknown command %q\n\n%s", args[0], usage)
	return exitUsage
}

func cliCheck(args []string, stdout, stderr io.Writer) int {
	start := time.Now()
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	netnsPath := fs.String("netns", "", "path of the network namespace to check (e.g. /var/run/netns/X)")
	confPath := fs.String("conf", "", "conflist or netready plugin object")
	podFlag := fs.String("pod", "", "the pod as NAMESPACE/NAME, for per-pod policy")
	var ann annotations
	fs.Var(&ann, "annotation", "a pod annotation KEY=VALUE (repeatable)")
	timeout := fs.Duration("timeout", 0, "override the config's timeout")
	prevPath := fs.String("prev-result", "", "a CNI result JSON naming the pod's interfaces, addresses and gateways")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *netnsPath == "" || *confPath == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "netready check: --netns and --conf are required; see netready help")
		return exitUsage
	}
	spec, err := cliSpec(*confPath, *podFlag, ann)
	if err != nil {
		fmt.Fprintf(stderr, "netready check: %v\n", err)
		return specExit(err)
	}
	if *timeout > 0 {
		spec.Timeout = *timeout
	}
	if spec.Skipped {
		fmt.Fprintf(stdout, "skipped: %s\n", spec.SkipReason)
		return exitReady
	}
	n, err := podns.Open(*netnsPath)
	if err != nil {
		fmt.Fprintf(stderr, "netready check: %v\n", err)
		return exitCannot
	}
	defer n.Close()
	pod, err := cliPod(n, *prevPath)
	if err != nil {
		fmt.Fprintf(stderr, "netready check: %v\n", err)
		return exitCannot
	}
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(spec.Timeout))
	defer cancel()
	report, err := podcheck.RunIn(ctx, n, spec, pod, endOnSignal)
	if err != nil {
		fmt.Fprintf(stderr, "netready check: %v\n", err)
		return exitCannot
	}
	printReport(stdout, report)
	if !report.Ready() {
		return exitNotReady
	}
	return exitReady
}

// annotations collects repeated --annotation KEY=VALUE flags.
type annotations map[string]string

func (a *annotations) String() string { return "" }

func (a *annotations) Set(kv string) error {
	k, v, ok := strings.Cut(kv, "=")
	if !ok || k == "" {
		return errors.New("want KEY=VALUE, e.g. netready.dev/probes=tcp://10.0.0.5:5432")
	}
	if *a == nil {
		*a = annotations{}
	}
	(*a)[k] = v
	return nil
}

// readError is a file named on the command line that cannot be read: the
// machine's trouble (missing, no permission), not a wrong command line.
type readError struct{ err error }

func (e readError) Error() string { return e.err.Error() }
func (e readError) Unwrap() error { return e.err }

// specExit is the exit code for an error of cliSpec: 3 when the conf file
// cannot be read, 2 when what it holds (or a flag) is wrong.
func specExit(err error) int {
	if errors.As(err, new(readError)) {
		return exitCannot
	}
	return exitUsage
}

// cliSpec resolves the spec for the pod named by NS/NAME (or no pod) with
// the given annotations, as the runtime would pass them.
func cliSpec(path, podName string, ann annotations) (config.Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return config.Spec{}, readError{err}
	}
	obj, err := config.FindPlugin(data)
	if err != nil {
		return config.Spec{}, err
	}
	conf, err := config.Parse(obj)
	if err != nil {
		return config.Spec{}, err
	}
	pod := config.Pod{Annotations: ann}
	if podName != "" {
		ns, name, ok := strings.Cut(podName, "/")
		if !ok || ns == "" || name == "" {
			return config.Spec{}, errors.New("--pod wants NAMESPACE/NAME")
		}
		pod.Namespace, pod.Name = ns, name
	}
	return conf.Resolve(pod)
}

// cliPod is the pod as prevResult describes it, or as its netns shows it.
func cliPod(n *podns.NetNS, prevPath string) (podcheck.Pod, error) {
	if prevPath == "" {
		return podcheck.PodFromNetNS(n)
	}
	data, err := os.ReadFile(prevPath)
	if err != nil {
		return podcheck.Pod{}, err
	}
	res, err := create.CreateFromBytes(data)
	if err != nil {
		return podcheck.Pod{}, fmt.Errorf("--prev-result %s: %w", prevPath, err)
	}
	prev, err := current.NewResultFromResult(res)
	if err != nil {
		return podcheck.Pod{}, fmt.Errorf("--prev-result %s: %w", prevPath, err)
	}
	// The runtime's name for the pod's interface is eth0 (CNI_IFNAME), used
	// for results too old to say which interface an address is on.
	return podcheck.PodFromResult(n.Path(), "eth0", prev)
}

func cliExplain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	confPath := fs.String("conf", "", "conflist or netready plugin object")
	podFlag := fs.String("pod", "", "the pod as NAMESPACE/NAME")
	var ann annotations
	fs.Var(&ann, "annotation", "a pod annotation KEY=VALUE (repeatable)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *confPath == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "netready explain: --conf is required; see netready help")
		return exitUsage
	}
	spec, err := cliSpec(*confPath, *podFlag, ann)
	if err != nil {
		fmt.Fprintf(stderr, "netready explain: %v\n", err)
		return specExit(err)
	}
	e := newExplanation(*podFlag, spec)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(e); err != nil {
			fmt.Fprintf(stderr, "netready explain: %v\n", err)
			return exitCannot
		}
		return exitReady
	}
	e.print(stdout)
	return exitReady
}

// explanation is the resolved spec as explain shows it.
type explanation struct {
	Pod                string         `json:"pod,omitempty"`
	Skipped            bool           `json:"skipped"`
	SkipReason         string         `json:"skipReason,omitempty"`
	Rule               string         `json:"rule,omitempty"`
	Timeout            string         `json:"timeout"`
	OnTimeout          string         `json:"onTimeout"`
	Gateway            bool           `json:"gateway"`
	DefaultRoute       bool           `json:"defaultRoute"`
	Interval           string         `json:"interval"`
	MaxInterval        string         `json:"maxInterval"`
	AttemptTimeout     string         `json:"attemptTimeout"`
	Probes             []logrec.Probe `json:"probes"`
	AnnotationsIgnored bool           `json:"annotationsIgnored,omitempty"`
}

func newExplanation(pod string, s config.Spec) explanation {
	e := explanation{
		Pod: pod, Skipped: s.Skipped, SkipReason: s.SkipReason, Rule: s.Rule,
		Timeout: s.Timeout.String(), OnTimeout: string(s.OnTimeout),
		Gateway: s.Gateway, DefaultRoute: s.DefaultRoute,
		Interval: s.Interval.String(), MaxInterval: s.MaxInterval.String(), AttemptTimeout: s.AttemptTimeout.String(),
		Probes:             []logrec.Probe{},
		AnnotationsIgnored: s.AnnotationsIgnored,
	}
	for _, p := range s.Probes {
		e.Probes = append(e.Probes, logrec.Probe{URL: p.URL, Origin: p.Origin})
	}
	return e
}

func (e explanation) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	yes := map[bool]string{true: "yes", false: "no"}
	pod := e.Pod
	if pod == "" {
		pod = "(none given: no skip entry or rule matches)"
	}
	fmt.Fprintf(tw, "pod:\t%s\n", pod)
	if e.Skipped {
		fmt.Fprintf(tw, "skipped:\tyes, by %s: ADD passes the pod through ungated\n", e.SkipReason)
		tw.Flush()
		return
	}
	fmt.Fprintf(tw, "skipped:\tno\n")
	rule := e.Rule
	if rule == "" {
		rule = "none matched"
	}
	fmt.Fprintf(tw, "rule:\t%s\n", rule)
	fmt.Fprintf(tw, "timeout:\t%s, then %s\n", e.Timeout, map[string]string{"fail": "fail (CNI error 11, the kubelet retries)", "allow": "allow (pass the pod, log a warning)"}[e.OnTimeout])
	fmt.Fprintf(tw, "gateway:\t%s\n", yes[e.Gateway])
	fmt.Fprintf(tw, "defaultRoute:\t%s\n", yes[e.DefaultRoute])
	fmt.Fprintf(tw, "attempts:\tevery %s backing off to %s, each up to %s\n", e.Interval, e.MaxInterval, e.AttemptTimeout)
	if e.AnnotationsIgnored {
		fmt.Fprintf(tw, "annotations:\tignored (annotations.allow is false)\n")
	}
	if len(e.Probes) == 0 {
		fmt.Fprintf(tw, "probes:\tnone\n")
	}
	for i, p := range e.Probes {
		label := ""
		if i == 0 {
			label = "probes:"
		}
		fmt.Fprintf(tw, "%s\t%s\t(from %s)\n", label, p.URL, p.Origin)
	}
	tw.Flush()
}

func printReport(w io.Writer, r *gate.Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONDITION\tREADY\tAFTER\tATTEMPTS\tLAST ERROR")
	for _, c := range r.Conditions {
		ready, after, lastErr := "no", "-", ""
		if c.Ready {
			ready, after = "yes", c.After.Round(10*time.Microsecond).String()
		} else if c.LastErr != nil {
			lastErr = c.LastErr.Error()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", c.Name, ready, after, c.Attempts, lastErr)
	}
	tw.Flush()
	state := "ready"
	if !r.Ready() {
		state = "NOT READY"
		if r.Err != nil {
			state += " (" + r.Err.Error() + ")"
		}
	}
	fmt.Fprintf(w, "%s after %v\n", state, r.Waited.Round(10*time.Microsecond))
}
