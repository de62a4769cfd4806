package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/install"
)

// Exit codes of install and uninstall (besides exitReady 0 and exitUsage 2).
const (
	exitFailed     = 1 // failed or refused; nothing changed unless the output says so
	exitNotInForce = 3 // the files are in place, but containerd's first conflist does not chain netready
)

// restartWait bounds how long --restart waits for K3s to rewrite its chain:
// K3s writes 10-flannel.conflist a few seconds into its start.
const restartWait = 60 * time.Second

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// nodeFlags are the flags install and uninstall share.
type nodeFlags struct {
	binDir, dataDir, root string
	restart, dryRun       bool
}

func (f *nodeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.binDir, "bin-dir", "", "K3s's CNI bin dir (default <data-dir>/data/cni, or data/current/bin on older K3s)")
	fs.StringVar(&f.dataDir, "data-dir", "", "K3s's data-dir (default: the running k3s's, else /var/lib/rancher/k3s)")
	fs.StringVar(&f.root, "root", "", "prefix every path touched with DIR (tests, image builds)")
	fs.BoolVar(&f.restart, "restart", false, "restart K3s where the mode needs it (flannel-cni-conf)")
	fs.BoolVar(&f.dryRun, "dry-run", false, "print every change, make none")
}

// parse parses args into fs, which holds f's flags, and checks f: exitReady,
// or the code to exit with.
func (f *nodeFlags) parse(fs *flag.FlagSet, args []string, stderr io.Writer, cmd string) int {
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "netready %s: unexpected argument %q; see netready help\n", cmd, fs.Arg(0))
		return exitUsage
	}
	return f.check(stderr, cmd)
}

// check returns exitUsage for flags that cannot go together or name no
// absolute path, exitFailed for a --root that is not a directory on this
// machine (the command line is fine, the machine is not as it says), and
// exitReady when the flags hold.
func (f *nodeFlags) check(stderr io.Writer, cmd string) int {
	for _, p := range []struct{ name, v string }{{"--bin-dir", f.binDir}, {"--data-dir", f.dataDir}} {
		if p.v != "" && !filepath.IsAbs(p.v) {
			fmt.Fprintf(stderr, "netready %s: %s wants an absolute path as the node sees it, got %q\n", cmd, p.name, p.v)
			return exitUsage
		}
	}
	if f.root == "" {
		return exitReady
	}
	if f.restart {
		fmt.Fprintf(stderr, "netready %s: --restart acts on this machine's K3s and cannot be combined with --root\n", cmd)
		return exitUsage
	}
	abs, err := filepath.Abs(f.root)
	if err != nil || !isDirectory(abs) {
		fmt.Fprintf(stderr, "netready %s: --root %s is not a directory; create it or name the node's root\n", cmd, f.root)
		return exitFailed
	}
	f.root = abs
	return exitReady
}

func isDirectory(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func needRoot(f nodeFlags, stderr io.Writer, cmd string) bool {
	if f.root == "" && !f.dryRun && os.Geteuid() != 0 {
		fmt.Fprintf(stderr, "netready %s: K3s's files are root's: run it as root (sudo netready %s ...); --dry-run works without\n", cmd, cmd)
		return false
	}
	return true
}

func cliInstall(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("install", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var nf nodeFlags
	nf.register(fs)
	var probes, skip stringList
	fs.Var(&probes, "probe", "a probe URL every gated pod must pass (repeatable)")
	fs.Var(&skip, "skip-namespace", "pods of NS pass ungated (repeatable; default kube-system; '' skips none)")
	timeout := fs.String("timeout", "", "the whole ADD budget, a Go duration, at most "+config.MaxTimeout.String()+" (default "+config.DefaultTimeout.String()+")")
	onTimeout := fs.String("on-timeout", "fail", "fail or allow")
	logFile := fs.String("log-file", install.DefaultLogFile, "netready's log file; '' logs to stderr (lost on K3s)")
	mode := fs.String("mode", string(install.ModeOwned), "owned or flannel-cni-conf")
	binary := fs.String("binary", "", "the netready binary to install (default: this one)")
	noPodWatch := fs.Bool("no-pod-watch", false, "never ask the API server whether a waiting pod was deleted (default: ask, with the kubelet's credentials from <data-dir>/agent)")
	if code := nf.parse(fs, args, stderr, "install"); code != exitReady {
		return code
	}
	m := install.Mode(*mode)
	if m != install.ModeOwned && m != install.ModeFlannelCNIConf {
		fmt.Fprintf(stderr, "netready install: --mode wants owned or flannel-cni-conf, got %q\n", *mode)
		return exitUsage
	}
	if *onTimeout != "fail" && *onTimeout != "allow" {
		fmt.Fprintf(stderr, "netready install: --on-timeout wants fail or allow, got %q\n", *onTimeout)
		return exitUsage
	}
	if *logFile != "" && !filepath.IsAbs(*logFile) {
		fmt.Fprintf(stderr, "netready install: --log-file wants an absolute path (or '' for stderr), got %q\n", *logFile)
		return exitUsage
	}
	skipNS := []string{"kube-system"}
	if len(skip) > 0 {
		skipNS = nil
		for _, s := range skip {
			if s != "" {
				skipNS = append(skipNS, s)
			}
		}
	}
	if *binary == "" {
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintf(stderr, "netready install: cannot find this binary (%v): pass --binary PATH\n", err)
			return exitFailed
		}
		*binary = exe
	}
	if !needRoot(nf, stderr, "install") {
		return exitFailed
	}
	o := install.Options{Root: nf.root, DataDir: nf.dataDir, BinDir: nf.binDir, Binary: *binary, Mode: m, NoPodWatch: *noPodWatch,
		Settings: install.Settings{Probes: probes, Timeout: *timeout, OnTimeout: *onTimeout, SkipNamespaces: skipNS, LogFile: *logFile}}
	node, err := install.ReadNode(o, *binary)
	if err != nil {
		fmt.Fprintf(stderr, "netready install: %v\n", err)
		return exitFailed
	}
	describeNode(stdout, node)
	steps, notes, err := install.PlanInstall(o, node)
	if err != nil {
		fmt.Fprintf(stderr, "netready install: %v\n", err)
		return exitFailed
	}
	for _, n := range notes {
		fmt.Fprintf(stdout, "note: %s.\n", n)
	}
	if nf.dryRun {
		return printDryRun(stdout, steps, "install")
	}
	done, err := install.Apply(nf.root, steps)
	for _, d := range done {
		fmt.Fprintln(stdout, d)
	}
	if err != nil {
		fmt.Fprintf(stderr, "netready install: %v; fix that and run netready install again (netready uninstall undoes what was done)\n", err)
		return exitFailed
	}
	if len(steps) == 0 {
		fmt.Fprintln(stdout, "nothing to change: netready is already installed exactly as asked.")
	}
	confDir := filepath.Join(nf.root, node.Paths.ConfDir)
	if m == install.ModeOwned {
		if nf.restart {
			fmt.Fprintln(stdout, "no restart needed in owned mode: containerd picks the owned conflist up by itself, so --restart did nothing.")
		}
		return checkFirst(stdout, stderr, confDir, node, "the next pod is gated, no restart needed (running pods are untouched)",
			"remove what shadows it, or run netready install again")
	}
	return finishFlannelMode(stdout, stderr, nf, node, confDir)
}

// checkFirst is install's last word: containerd's first conflist must chain netready.
func checkFirst(stdout, stderr io.Writer, confDir string, node *install.Node, ok, fix string) int {
	path, has, why := install.FirstChainHasNetready(confDir)
	if has {
		fmt.Fprintf(stdout, "containerd reads %s first and it chains netready last: %s.\n", nodePath(confDir, node, path), ok)
		return exitReady
	}
	fmt.Fprintf(stderr, "netready install: NOT IN FORCE: the first conflist containerd reads in %s (%s) does not chain netready: %s; %s.\n", node.Paths.ConfDir, nodePath(confDir, node, path), why, fix)
	return exitNotInForce
}

// nodePath turns a path under --root back into the node's view.
func nodePath(confDir string, node *install.Node, p string) string {
	if p == "" {
		return "none"
	}
	root := strings.TrimSuffix(confDir, node.Paths.ConfDir)
	return strings.TrimPrefix(p, root)
}

func finishFlannelMode(stdout, stderr io.Writer, nf nodeFlags, node *install.Node, confDir string) int {
	svc := install.DetectService(nf.root, node.K3s)
	live := filepath.Join(confDir, install.PrimaryName)
	if has, _ := fileHasNetready(live); has {
		return checkFirst(stdout, stderr, confDir, node, "K3s runs netready's chain", "remove what shadows it, or run netready install again")
	}
	if !nf.restart {
		fmt.Fprintf(stderr, "netready install: NOT IN FORCE yet: K3s copies %s over its chain only when it starts; restart it (%s), then run this command again to check.\n", install.FlannelConflist, svc.Command(node.K3s))
		return exitNotInForce
	}
	if svc.Restart == nil {
		fmt.Fprintf(stderr, "netready install: NOT IN FORCE yet: K3s runs under neither systemd nor OpenRC, so --restart cannot restart it; %s, then run this command again to check.\n", svc.Command(node.K3s))
		return exitNotInForce
	}
	before := modTime(live)
	fmt.Fprintf(stdout, "restarting K3s: %s\n", svc.Command(node.K3s))
	if out, err := exec.Command(svc.Restart[0], svc.Restart[1:]...).CombinedOutput(); err != nil {
		fmt.Fprintf(stderr, "netready install: %s failed (%v: %s); the files are in place: fix K3s (its log: journalctl -u %s) and restart it.\n", svc.Command(node.K3s), err, bytes.TrimSpace(out), svc.Name)
		return exitFailed
	}
	deadline := time.Now().Add(restartWait)
	for time.Now().Before(deadline) && modTime(live).Equal(before) {
		time.Sleep(500 * time.Millisecond)
	}
	has, _ := fileHasNetready(live)
	if !has && modTime(live).Equal(before) {
		fmt.Fprintf(stderr, "netready install: NOT IN FORCE yet: K3s has not rewritten %s within %v of the restart; check that K3s is up (its log: journalctl -u %s, or /var/log/%s.log on OpenRC), then run this command again.\n", filepath.Join(node.Paths.ConfDir, install.PrimaryName), restartWait, svc.Name, svc.Name)
		return exitNotInForce
	}
	if !has {
		fmt.Fprintf(stderr, "netready install: NOT IN FORCE: K3s restarted and its live %s still has no netready: this K3s ignores flannel-cni-conf (k3s issue 14597, K3s 1.34-1.37); run netready uninstall, then netready install without --mode (the default owned mode works on every release without a restart).\n", filepath.Join(node.Paths.ConfDir, install.PrimaryName))
		return exitNotInForce
	}
	return checkFirst(stdout, stderr, confDir, node, "K3s runs netready's chain; pods created from now on are gated", "remove what shadows it, or run netready install again")
}

func fileHasNetready(p string) (bool, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return false, err
	}
	return install.ChainHasNetready(b), nil
}

func modTime(p string) time.Time {
	fi, err := os.Stat(p)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

func describeNode(w io.Writer, n *install.Node) {
	if n.K3s != nil {
		fmt.Fprintf(w, "found k3s %s (pid %d), data-dir %s (from %s).\n", n.K3s.Role, n.K3s.PID, n.Paths.DataDir, n.K3s.DataDirFrom)
	} else {
		fmt.Fprintf(w, "no running k3s found: working on data-dir %s (pass --data-dir if K3s will use another).\n", n.Paths.DataDir)
	}
}

func printDryRun(w io.Writer, steps []install.Step, cmd string) int {
	if len(steps) == 0 {
		fmt.Fprintf(w, "dry run: nothing to change, %s would do nothing.\n", cmd)
		return exitReady
	}
	fmt.Fprintf(w, "dry run: nothing was changed; %s would:\n", cmd)
	for _, s := range steps {
		fmt.Fprintf(w, "  %s\n", s)
		if s.Op == install.OpConflist || s.Op == install.OpFile {
			for _, line := range strings.Split(strings.TrimRight(string(s.Data), "\n"), "\n") {
				fmt.Fprintf(w, "    | %s\n", line)
			}
		}
	}
	return exitReady
}

func cliUninstall(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("uninstall", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var nf nodeFlags
	nf.register(fs)
	if code := nf.parse(fs, args, stderr, "uninstall"); code != exitReady {
		return code
	}
	if !needRoot(nf, stderr, "uninstall") {
		return exitFailed
	}
	o := install.Options{Root: nf.root, DataDir: nf.dataDir, BinDir: nf.binDir}
	for round := 0; ; round++ {
		node, err := install.ReadNode(o, "")
		if err != nil {
			fmt.Fprintf(stderr, "netready uninstall: %v\n", err)
			return exitFailed
		}
		steps, kept, err := install.PlanUninstall(node)
		if err != nil {
			fmt.Fprintf(stderr, "netready uninstall: %v\n", err)
			return exitFailed
		}
		if round == 0 && node.State == nil {
			fmt.Fprintf(stdout, "nothing to remove: netready install left no record here (%s).\n", node.Paths.State)
			return exitReady
		}
		if nf.dryRun {
			printDryRun(stdout, steps, "uninstall")
			for _, k := range kept {
				fmt.Fprintf(stdout, "  keep %s\n", k)
			}
			return exitReady
		}
		done, err := install.Apply(nf.root, steps)
		for _, d := range done {
			fmt.Fprintln(stdout, d)
		}
		if err != nil {
			fmt.Fprintf(stderr, "netready uninstall: %v; fix that and run netready uninstall again\n", err)
			return exitFailed
		}
		if len(kept) == 0 {
			path, has, _ := install.FirstChainHasNetready(filepath.Join(nf.root, node.Paths.ConfDir))
			if has {
				fmt.Fprintf(stderr, "netready uninstall: containerd's first conflist %s still chains netready, and netready install did not write it; remove netready from it by hand.\n", nodePath(filepath.Join(nf.root, node.Paths.ConfDir), node, path))
				return exitFailed
			}
			logs := ""
			if isDirectory(filepath.Join(nf.root, filepath.Dir(install.DefaultLogFile))) {
				logs = ", and netready's logs stay in " + filepath.Dir(install.DefaultLogFile)
			}
			fmt.Fprintf(stdout, "netready is uninstalled: new pods get K3s's chain without netready; running pods are untouched%s.\n", logs)
			return exitReady
		}
		svc := install.DetectService(nf.root, node.K3s)
		if !nf.restart || svc.Restart == nil || round > 0 {
			for _, k := range kept {
				fmt.Fprintf(stdout, "kept %s.\n", k)
			}
			fmt.Fprintf(stdout, "To finish: %s, then run netready uninstall again.\n", svc.Command(node.K3s))
			return exitReady
		}
		live := filepath.Join(nf.root, node.Paths.ConfDir, install.PrimaryName)
		fmt.Fprintf(stdout, "restarting K3s so that it drops netready from its chain: %s\n", svc.Command(node.K3s))
		if out, err := exec.Command(svc.Restart[0], svc.Restart[1:]...).CombinedOutput(); err != nil {
			fmt.Fprintf(stderr, "netready uninstall: %s failed (%v: %s); fix K3s and run netready uninstall again to remove the binary.\n", svc.Command(node.K3s), err, bytes.TrimSpace(out))
			return exitFailed
		}
		deadline := time.Now().Add(restartWait)
		for time.Now().Before(deadline) {
			if has, _ := fileHasNetready(live); !has {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}
