// Package agent keeps netready in a node's CNI chain for a DaemonSet: it copies the binary into
// the CNI bin dir, keeps the owned conflist (the primary chain with netready last, pkg/install's
// format and atomic writer) in step with the primary conflist, and removes exactly that file (and
// the binary, once nothing chains it) when told to stop. It never edits the primary file.
package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/install"
)

// Interval is how often the conf dir is read: K3s rewrites its chain at start and someone may
// delete the owned file; either is repaired within a second. Two small reads per tick.
const Interval = 500 * time.Millisecond

// BinaryGrace is how long a stopping agent waits between removing its conflist and removing the
// binary: containerd reloads its chain on the conf dir's inotify event (0.15 s measured on the
// containerd tier), and an ADD it started before then still execs the binary. Well within the
// DaemonSet's 30 s termination grace.
const BinaryGrace = 2 * time.Second

// Agent is one node's agent. Paths are as this process sees them (the DaemonSet mounts the
// node's dirs).
type Agent struct {
	ConfDir string
	BinDir  string
	Plugin  []byte       // netready's plugin object, as appended to the chain
	Log     *slog.Logger // what the agent does, one line per change

	BinaryGrace time.Duration // see BinaryGrace; New sets it

	lastState string      // the last state logged, so a steady node logs nothing
	mine      os.FileInfo // the owned file as this agent last wrote it; nil before its first write
}

// ConfigError is a plugin object that New refuses: the operator's to fix,
// unlike a missing directory, which is the node's (or the mounts').
type ConfigError struct{ err error }

func (e *ConfigError) Error() string { return e.err.Error() }
func (e *ConfigError) Unwrap() error { return e.err }

// New checks the plugin object with netready's own parser (the ADD will parse it the same way)
// and returns an agent for the two dirs.
func New(confDir, binDir string, plugin []byte, log *slog.Logger) (*Agent, error) {
	conf, err := config.Parse(plugin)
	if err != nil {
		return nil, &ConfigError{fmt.Errorf("the netready config is invalid: %w", err)}
	}
	if conf.Type != "netready" {
		return nil, &ConfigError{fmt.Errorf(`the netready config has "type": %q; want "netready" (it is the plugin object appended to the chain)`, conf.Type)}
	}
	for _, d := range []string{confDir, binDir} {
		fi, err := os.Stat(d)
		if err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("%s is not a directory (%v): mount the node's CNI conf and bin dirs", d, err)
		}
	}
	var compact bytes.Buffer
	if err := jsonCompact(&compact, plugin); err != nil {
		return nil, err
	}
	return &Agent{ConfDir: confDir, BinDir: binDir, Plugin: compact.Bytes(), Log: log, BinaryGrace: BinaryGrace}, nil
}

// InstallBinary puts the binary at src into the bin dir as "netready", unless the same bytes are
// there already (a restarted agent does not churn the file containerd execs).
func (a *Agent) InstallBinary(src string) error {
	want, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("read the binary to install: %v", err)
	}
	dst := filepath.Join(a.BinDir, install.BinaryName)
	if have, err := os.ReadFile(dst); err == nil && bytes.Equal(have, want) {
		a.Log.Info("binary already in place", "path", dst)
		return nil
	}
	if err := install.InstallBinary(src, a.BinDir, install.BinaryName); err != nil {
		return err
	}
	a.Log.Info("binary installed", "path", dst, "bytes", len(want))
	return nil
}

// Dir is what the agent read of the conf dir.
type Dir struct {
	Names       []string // conf files libcni lists (.conf, .conflist, .json), base names, sorted
	Others      []string // every other name in the dir
	Primary     string   // the first conf file other than the owned one; "" when none
	PrimaryData []byte
	Owned       []byte // the owned file's bytes; nil when absent
}

// Action is what Decide chose.
type Action struct {
	Write  []byte // the owned conflist to write; nil: nothing to write
	Remove bool   // remove the owned file (a refusal)
	State  string // one line for the log: what holds now
	Err    error  // a refusal, said to the operator
}

// Decide is the agent's whole policy, without I/O: from what is in the conf dir, what to do.
func Decide(d Dir, plugin []byte) Action {
	for _, n := range d.Others {
		if strings.HasSuffix(n, ".cilium_bak") {
			return refusal(d, "%s: Cilium in exclusive mode (cni.exclusive) owns this conf dir and renames every other CNI config; netready cannot chain there. Set cni.exclusive=false in Cilium, or do not run netready on this node", n)
		}
	}
	if len(d.Names) > 0 && d.Names[0] < install.OwnedName {
		return refusal(d, "%s sorts before %s in the conf dir: containerd loads only the first file, so netready's chain would never be used (a meta-plugin such as Multus owns the dir). Chain netready in that file's own configuration instead", d.Names[0], install.OwnedName)
	}
	if d.Primary == "" {
		return Action{State: "waiting for a primary conflist in the conf dir (K3s writes 10-flannel.conflist when it starts)"}
	}
	if install.ChainHasNetready(d.PrimaryData) {
		return refusal(d, "the primary conflist %s already chains netready (installed by hand or by flannel-cni-conf): a second netready would gate every pod twice. Remove it there, or do not run the agent", d.Primary)
	}
	owned, err := install.BuildOwned(d.PrimaryData, plugin)
	if err != nil {
		return refusal(d, "cannot chain netready after %s: %v", d.Primary, err)
	}
	if bytes.Equal(owned, d.Owned) {
		return Action{State: "in step with " + d.Primary}
	}
	return Action{Write: owned, State: "in step with " + d.Primary}
}

func refusal(d Dir, format string, args ...any) Action {
	err := fmt.Errorf(format, args...)
	return Action{Remove: d.Owned != nil, State: "refused: " + err.Error(), Err: err}
}

// Read reads the conf dir as containerd lists it.
func (a *Agent) Read() (Dir, error) {
	var d Dir
	entries, err := os.ReadDir(a.ConfDir)
	if err != nil {
		return d, err
	}
	files, err := libcni.ConfFiles(a.ConfDir, install.ConfExtensions)
	if err != nil {
		return d, err
	}
	for _, f := range files {
		d.Names = append(d.Names, filepath.Base(f))
	}
	slices.Sort(d.Names)
	for _, e := range entries {
		if !slices.Contains(d.Names, e.Name()) {
			d.Others = append(d.Others, e.Name())
		}
	}
	for _, n := range d.Names {
		if n != install.OwnedName {
			d.Primary = n
			break
		}
	}
	if d.Primary != "" {
		if d.PrimaryData, err = os.ReadFile(filepath.Join(a.ConfDir, d.Primary)); err != nil {
			return d, err
		}
	}
	d.Owned, err = os.ReadFile(filepath.Join(a.ConfDir, install.OwnedName))
	if errors.Is(err, fs.ErrNotExist) {
		d.Owned, err = nil, nil
	}
	return d, err
}

// Reconcile reads the conf dir once and acts: writes the owned conflist when it is missing or out
// of step, removes it on a refusal. It returns the refusal, if any.
func (a *Agent) Reconcile() error {
	d, err := a.Read()
	if err != nil {
		return fmt.Errorf("read the CNI conf dir %s: %v", a.ConfDir, err)
	}
	act := Decide(d, a.Plugin)
	why := "created"
	switch {
	case act.Write != nil && d.Owned != nil:
		why = "primary changed"
	case act.Write == nil && act.Err == nil && d.Owned != nil && a.mine == nil:
		// A file in step that another agent wrote (a rolling update's surge pod, a restarted
		// container): write it once anyway, so that agent's stop, which removes only the file it
		// wrote, leaves this one's in place.
		act.Write, why = d.Owned, "taken over from a previous agent"
	}
	if act.Remove {
		if err := a.removeOwned("refused"); err != nil {
			return err
		}
	}
	if act.Write != nil {
		p := filepath.Join(a.ConfDir, install.OwnedName)
		// The file as written, not a stat of p afterwards: another agent may rename its own
		// over p in between, and this one's stop would then take that file for its own.
		fi, err := install.WriteConflist(a.ConfDir, install.OwnedName, act.Write, []string{a.BinDir})
		if err != nil {
			return err
		}
		a.mine = fi
		a.Log.Info("owned conflist written", "path", p, "why", why, "primary", d.Primary)
	}
	if act.State != a.lastState {
		if act.Err != nil {
			a.Log.Error("netready not chained", "reason", act.Err.Error())
		} else {
			a.Log.Info(act.State)
		}
		a.lastState = act.State
	}
	return act.Err
}

// stop removes the owned conflist if it is still this agent's and then, once containerd has had
// time to reload its chain, the binary, unless a conf file in the dir still chains netready
// (another agent's, or `netready install`'s): the node is left as it was before the agent.
// A pod gated meanwhile does not need the binary for its DEL: containerd tears a sandbox down
// with the chain it has loaded now, K3s's own (e2e/k3s TestDaemonSet deletes such a pod after
// the DaemonSet).
func (a *Agent) stop() error {
	if err := a.removeOwned("stopping"); err != nil {
		return err
	}
	if a.chained() {
		return nil
	}
	time.Sleep(a.BinaryGrace)
	if a.chained() { // an agent that started meanwhile
		return nil
	}
	p := filepath.Join(a.BinDir, install.BinaryName)
	err := os.Remove(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: %v", p, err)
	}
	a.Log.Info("binary removed: no conf file chains netready any more", "path", p)
	return nil
}

// chained says whether a conf file in the conf dir (any of them, not only the first) chains
// netready; an unreadable dir counts as chained, so the binary stays.
func (a *Agent) chained() bool {
	files, err := libcni.ConfFiles(a.ConfDir, install.ConfExtensions)
	if err != nil {
		return true
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || install.ChainHasNetready(b) {
			return true
		}
	}
	return false
}

func (a *Agent) removeOwned(why string) error {
	p := filepath.Join(a.ConfDir, install.OwnedName)
	if why == "stopping" {
		// This agent never wrote the file, or another agent replaced it since (each write is a
		// rename, so a new inode): it is that agent's, and it keeps the node gated after this one stops.
		// Between this stat and the remove another agent may still rename in a new file; it
		// then finds the file gone and writes it again within one interval.
		if fi, err := os.Stat(p); err == nil && (a.mine == nil || !os.SameFile(fi, a.mine)) {
			a.Log.Info("owned conflist left in place: another agent wrote it after this one", "path", p)
			return nil
		}
	}
	err := os.Remove(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: %v", p, err)
	}
	a.Log.Info("owned conflist removed", "path", p, "why", why)
	return nil
}

// Run reconciles every interval until ctx is done, then removes the owned conflist if it is still
// the one this agent wrote, and the binary when nothing chains it any more (the DaemonSet is being
// deleted or the pod replaced: the node falls back to its primary chain until the next agent
// writes it again). Errors are logged and retried; Run returns the removal's.
func (a *Agent) Run(ctx context.Context, interval time.Duration) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	lastErr := ""
	for {
		err := a.Reconcile()
		switch {
		case err == nil:
			lastErr = ""
		case strings.HasPrefix(a.lastState, "refused: "): // Reconcile said it once
		case err.Error() != lastErr: // a failure is said once, not every tick
			lastErr = err.Error()
			a.Log.Error("reconcile failed; retrying every interval", "error", lastErr, "interval", interval.String())
		}
		select {
		case <-ctx.Done():
			return a.stop()
		case <-tick.C:
		}
	}
}
