package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/gate"
	"github.com/netready/netready/pkg/netstate"
	"github.com/netready/netready/pkg/podcheck"
)

// Exit codes of the command-line tool.
const (
	exitReady    = 0
	exitNotReady = 1
	exitUsage    = 2
)

const usage = `netready: a chained CNI plugin that holds ADD until the pod's network works.

Run by a container runtime (CNI_COMMAND set), it speaks CNI. Run by hand:

  netready check --netns PATH --conf FILE [--pod NS/NAME] [--timeout DUR]
      Wait, as ADD would, until the netns's network is ready, and print each
      condition and when it held. FILE is a conflist (its netready entry is
      used) or a netready plugin object. The links, addresses and gateways
      are read from the netns itself. Exit 0 ready, 1 not ready, 2 usage or
      config error.
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
	timeout := fs.Duration("timeout", 0, "override the config's timeout")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *netnsPath == "" || *confPath == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "netready check: --netns and --conf are required; see netready help")
		return exitUsage
	}
	spec, err := cliSpec(*confPath, *podFlag)
	if err != nil {
		fmt.Fprintf(stderr, "netready check: %v\n", err)
		return exitUsage
	}
	if *timeout > 0 {
		spec.Timeout = *timeout
	}
	if spec.Skipped {
		fmt.Fprintf(stdout, "skipped: %s\n", spec.SkipReason)
		return exitReady
	}
	pod, err := podFromNetNS(*netnsPath)
	if err != nil {
		fmt.Fprintf(stderr, "netready check: %v\n", err)
		return exitUsage
	}
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(spec.Timeout))
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	report, err := podcheck.Run(ctx, spec, pod)
	if err != nil {
		fmt.Fprintf(stderr, "netready check: %v\n", err)
		return exitUsage
	}
	printReport(stdout, report)
	if !report.Ready() {
		return exitNotReady
	}
	return exitReady
}

// cliSpec resolves the spec for the pod named by NS/NAME (or no pod).
func cliSpec(path, podName string) (config.Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return config.Spec{}, err
	}
	obj, err := config.FindPlugin(data)
	if err != nil {
		return config.Spec{}, err
	}
	conf, err := config.Parse(obj)
	if err != nil {
		return config.Spec{}, err
	}
	var pod config.Pod
	if podName != "" {
		ns, name, ok := strings.Cut(podName, "/")
		if !ok || ns == "" || name == "" {
			return config.Spec{}, errors.New("--pod wants NAMESPACE/NAME")
		}
		pod.Namespace, pod.Name = ns, name
	}
	return conf.Resolve(pod)
}

// podFromNetNS stands in for prevResult: the netns's own links, addresses
// and default gateways.
func podFromNetNS(path string) (podcheck.Pod, error) {
	view, err := netstate.Open(path)
	if err != nil {
		return podcheck.Pod{}, err
	}
	defer view.Close()
	links, err := view.Links()
	if err != nil {
		return podcheck.Pod{}, err
	}
	pod := podcheck.Pod{NetNS: path}
	for _, l := range links {
		lk := podcheck.Link{Name: l.Name}
		for _, a := range l.Addrs {
			lk.Addrs = append(lk.Addrs, a.Addr())
		}
		pod.Links = append(pod.Links, lk)
	}
	pod.Gateways, err = view.Gateways()
	return pod, err
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
