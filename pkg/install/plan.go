package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Mode is how netready gets into K3s's chain.
type Mode string

const (
	// ModeOwned, the default: an owned conflist in K3s's CNI conf dir that
	// containerd reads before K3s's own; no restart, works on every K3s.
	ModeOwned Mode = "owned"
	// ModeFlannelCNIConf: K3s's flannel-cni-conf option, which K3s 1.34–1.37
	// parse and ignore (k3s issue 14597); needs a K3s restart.
	ModeFlannelCNIConf Mode = "flannel-cni-conf"
)

// Where flannel-cni-conf mode puts its files (outside the data-dir: K3s
// copies the conflist over its own at each start).
const (
	K3sConfigDropInDir = "/etc/rancher/k3s/config.yaml.d"
	FlannelDropIn      = K3sConfigDropInDir + "/90-netready.yaml"
	FlannelConflist    = "/etc/rancher/k3s/netready/10-flannel-netready.conflist"
)

// BinaryName is the plugin's file name in the CNI bin dir: its "type".
const BinaryName = "netready"

// Options are install's flags. Paths are as the node sees them; Root
// prefixes every path touched (tests, image builds).
type Options struct {
	Root     string
	DataDir  string // "" = the running K3s's, else K3s's default
	BinDir   string // "" = K3s's CNI bin dir (PathsFor)
	Binary   string // the binary to install, as this process sees it; "" leaves the bin dir's as it is
	Mode     Mode
	Settings Settings
	// NoPodWatch keeps install from filling Settings.PodWatch from K3s's
	// kubelet credentials (K3sPodWatch) when it is nil.
	NoPodWatch bool
}

// Node is what was read from the node; PlanInstall and PlanUninstall decide
// from it alone.
type Node struct {
	K3s   *K3s // nil when no k3s runs
	Paths NodePaths
	// Primary is K3s's live 10-flannel.conflist, nil when there is none.
	Primary []byte
	// Existing holds the current bytes of every file install may write (node
	// path → bytes); a path absent from it does not exist.
	Existing map[string][]byte
	// State is the record an earlier install left, nil when none.
	State *State
	// Missing are the directories install needs that do not exist.
	Missing []string
	// OtherConfs are the conf dir's other files containerd may read (not
	// netready's, not K3s's 10-flannel.conflist), by name.
	OtherConfs []string
	// NoFlannel says where K3s is told to run without flannel, or "".
	NoFlannel string
	// CNIConfSetIn lists where flannel-cni-conf is set outside netready's
	// drop-in ("file:line: text"), for flannel-cni-conf mode.
	CNIConfSetIn []string
	// Binary is the binary to install, nil for uninstall.
	Binary []byte
	// KubeletKubeconfig is <data-dir>/agent/kubelet.kubeconfig, nil when absent.
	KubeletKubeconfig []byte
}

// State is install's record of what it made, kept beside K3s's conf dir
// (not in it: libcni would read a .json there), so uninstall removes
// exactly that.
type State struct {
	Mode  Mode     `json:"mode"`
	Files []string `json:"files"` // files install wrote
	Dirs  []string `json:"dirs"`  // directories it created, outermost first
}

// Op is what a step does.
type Op string

const (
	OpMkdir    Op = "create directory"
	OpState    Op = "write install record"
	OpBinary   Op = "install binary"
	OpConflist Op = "write conflist"
	OpFile     Op = "write file"
	OpRemove   Op = "remove"
	OpRmdir    Op = "remove directory if empty"
)

// Step is one change to the node.
type Step struct {
	Op      Op
	Path    string   // as the node sees it
	Data    []byte   // what to write (OpState, OpConflist, OpFile)
	From    string   // OpBinary: the source, as this process sees it
	BinDirs []string // OpConflist: where its plugins must be, node paths
	Why     string   // one clause for the dry-run and the log of changes
}

func (s Step) String() string {
	if s.Why == "" {
		return fmt.Sprintf("%s %s", s.Op, s.Path)
	}
	return fmt.Sprintf("%s %s (%s)", s.Op, s.Path, s.Why)
}

// Refusal is an install or uninstall that must not go ahead; nothing was changed.
type Refusal struct{ Msg string }

func (r *Refusal) Error() string { return r.Msg }

func refuse(format string, args ...any) error {
	return &Refusal{Msg: fmt.Sprintf(format, args...) + " Nothing was changed."}
}

// ownedPath is the owned conflist's node path.
func (n *Node) ownedPath() string { return filepath.Join(n.Paths.ConfDir, OwnedName) }
func (n *Node) binPath() string   { return filepath.Join(n.Paths.BinDir, BinaryName) }

func (n *Node) recorded(path string) bool {
	return n.State != nil && slices.Contains(n.State.Files, path)
}

// PlanInstall returns the steps that make the node run netready as o says,
// in the order they must run (the install record first, so that a killed
// install is still undone exactly; the binary before the chain naming it),
// and notes the operator should read. No steps: nothing to change.
func PlanInstall(o Options, n *Node) (steps []Step, notes []string, err error) {
	if n.State != nil && n.State.Mode != o.Mode {
		return nil, nil, refuse("netready is installed here in %s mode (record %s); run netready uninstall first, then install in %s mode.", n.State.Mode, n.Paths.State, o.Mode)
	}
	settings := o.Settings
	if settings.PodWatch == nil && !o.NoPodWatch {
		// A pod deleted while its ADD waits lingers until the ADD ends:
		// neither the kubelet nor containerd stops it. The kubelet's own
		// credentials let netready see the deletion.
		if pw, err := K3sPodWatch(n.Paths.DataDir, n.KubeletKubeconfig); err != nil {
			notes = append(notes, fmt.Sprintf("podWatch is off: %v; a pod deleted while its ADD waits lingers until netready's timeout; run netready install again once K3s is up", err))
		} else {
			settings.PodWatch = pw
		}
	}
	obj, err := PluginObject(settings)
	if err != nil {
		return nil, nil, refuse("%v.", err)
	}
	if n.NoFlannel != "" {
		return nil, nil, refuse("%s, so K3s writes no flannel chain for netready to follow; put netready last in the conflist of the CNI this node uses instead.", n.NoFlannel)
	}
	if n.Primary == nil && len(n.OtherConfs) > 0 {
		return nil, nil, refuse("%s holds %s but no %s: this node runs another CNI than K3s's flannel, and K3s's flannel chain would replace it; put netready last in that CNI's conflist instead.", n.Paths.ConfDir, strings.Join(n.OtherConfs, ", "), PrimaryName)
	}
	for _, f := range n.OtherConfs {
		if n.Primary != nil && f < PrimaryName {
			return nil, nil, refuse("containerd runs %s from %s, not K3s's %s, and netready's chain would replace it; put netready last in %s instead, or move it away if it is a leftover.", f, n.Paths.ConfDir, PrimaryName, f)
		}
	}
	primary := n.Primary
	if primary == nil {
		primary = K3sChain
		notes = append(notes, fmt.Sprintf("no live %s in %s (K3s has not started yet?): K3s's built-in chain is used; run netready install again once K3s has written it, to follow its chain", PrimaryName, n.Paths.ConfDir))
	}

	var conflistPath string
	var extra []Step
	switch o.Mode {
	case ModeOwned:
		conflistPath = n.ownedPath()
		if _, ok := n.Existing[FlannelDropIn]; ok && !n.recorded(FlannelDropIn) {
			notes = append(notes, fmt.Sprintf("%s (the old k3s-node-bootstrap.sh's flannel-cni-conf drop-in) is still here: a K3s that honours it would put netready into its own chain as well, and the next install would refuse; delete it and %s", FlannelDropIn, FlannelConflist))
		}
	case ModeFlannelCNIConf:
		conflistPath = FlannelConflist
		if len(n.CNIConfSetIn) > 0 {
			return nil, nil, refuse("flannel-cni-conf is already set outside %s:\n  %s\nK3s takes one flannel-cni-conf; remove that setting, or use the default owned mode (netready install without --mode).", FlannelDropIn, strings.Join(n.CNIConfSetIn, "\n  "))
		}
		// K3s that honours the option has copied netready's chain over its
		// own: build from that chain without netready, not from it.
		if n.recorded(conflistPath) && ChainHasNetready(primary) {
			if p, err := withoutNetready(primary); err == nil {
				primary = p
			}
		}
		dropIn := []byte("# Written by netready install --mode flannel-cni-conf; netready uninstall removes it.\n" +
			"# K3s copies this conflist over its own 10-flannel.conflist at every start (K3s 1.34-1.37 ignore it: k3s issue 14597).\n" +
			"flannel-cni-conf: " + FlannelConflist + "\n")
		extra = append(extra, Step{Op: OpFile, Path: FlannelDropIn, Data: dropIn, Why: "points K3s's flannel-cni-conf at netready's chain"})
	default:
		return nil, nil, refuse("unknown mode %q: want owned or flannel-cni-conf.", o.Mode)
	}

	conflist, err := BuildOwned(primary, obj)
	if errors.Is(err, ErrPrimaryHasNetready) {
		return nil, nil, refuse("K3s's live chain %s already holds netready (%v), from an earlier install through flannel-cni-conf or a hand edit; chaining it twice would gate every pod twice. Take it out there (an old k3s-node-bootstrap.sh install: delete %s, then restart K3s so that it rewrites its chain) and run netready install again.", filepath.Join(n.Paths.ConfDir, PrimaryName), err, FlannelDropIn)
	}
	if err != nil {
		return nil, nil, refuse("cannot build netready's chain from %s: %v; check that file (K3s writes it at start).", filepath.Join(n.Paths.ConfDir, PrimaryName), err)
	}

	var wants []Step
	if n.Binary != nil { // without a binary (o.Binary ""), the one in the bin dir is used as it is
		wants = append(wants, Step{Op: OpBinary, Path: n.binPath(), From: o.Binary, Why: "the plugin, into K3s's CNI bin dir"})
	}
	wants = append(wants, Step{Op: OpConflist, Path: conflistPath, Data: conflist, BinDirs: n.Paths.BinDirs, Why: "K3s's chain " + chainSummaryShort(primary) + " with netready last"})
	wants = append(wants, extra...)

	// Refuse to overwrite what is not ours.
	for _, w := range wants {
		cur, exists := n.Existing[w.Path]
		if !exists || n.recorded(w.Path) {
			continue
		}
		same := (w.Op == OpBinary && bytes.Equal(cur, n.Binary)) || (w.Op != OpBinary && bytes.Equal(cur, w.Data))
		if !same || w.Op != OpBinary {
			return nil, nil, refuse("%s exists and netready's install record (%s) does not list it, so it is not netready's to overwrite; move it away (or run netready uninstall with the tool that made it) and run netready install again.", w.Path, n.Paths.State)
		}
	}

	// What changes.
	for _, w := range wants {
		cur, exists := n.Existing[w.Path]
		switch {
		case !exists:
		case w.Op == OpBinary && bytes.Equal(cur, n.Binary):
			continue
		case w.Op != OpBinary && bytes.Equal(cur, w.Data):
			continue
		}
		steps = append(steps, w)
	}

	// The record: what this install makes, with what an earlier one made.
	st := State{Mode: o.Mode}
	if n.State != nil {
		st = *n.State
	}
	var mkdirs []Step
	for _, d := range n.Missing {
		mkdirs = append(mkdirs, Step{Op: OpMkdir, Path: d})
		if !slices.Contains(st.Dirs, d) {
			st.Dirs = append(st.Dirs, d)
		}
	}
	for _, w := range wants {
		if !slices.Contains(st.Files, w.Path) {
			st.Files = append(st.Files, w.Path)
		}
	}
	stateBytes, _ := json.MarshalIndent(st, "", "  ")
	stateBytes = append(stateBytes, '\n')
	if cur, ok := n.Existing[n.Paths.State]; !ok || !bytes.Equal(cur, stateBytes) {
		steps = append([]Step{{Op: OpState, Path: n.Paths.State, Data: stateBytes, Why: "what netready uninstall will remove"}}, steps...)
	}
	if len(steps) > 0 {
		steps = append(mkdirs, steps...)
	}
	if n.Paths.Note != "" {
		notes = append(notes, n.Paths.Note)
	}
	return steps, notes, nil
}

// PlanUninstall returns the steps that remove exactly what install made, as
// its record lists it: the chain first (containerd falls back to K3s's own
// at once), then the binary, unless K3s's live chain still names netready
// (every new pod would fail without it), then the record and the
// directories install created, when empty. kept says what stays and why.
func PlanUninstall(n *Node) (steps []Step, kept []string, err error) {
	if n.State == nil {
		if _, ok := n.Existing[n.ownedPath()]; ok {
			return nil, nil, refuse("%s exists but there is no install record (%s), so it was not made by netready install; remove it by hand if it is netready's.", n.ownedPath(), n.Paths.State)
		}
		return nil, nil, nil
	}
	keepBin := n.Primary != nil && ChainHasNetready(n.Primary)
	var bin string
	// Newest first: flannel-cni-conf's drop-in goes before the conflist it
	// names (K3s refuses to start on a flannel-cni-conf file that is gone).
	for i := len(n.State.Files) - 1; i >= 0; i-- {
		f := n.State.Files[i]
		if filepath.Base(f) == BinaryName {
			bin = f
			continue
		}
		if _, ok := n.Existing[f]; ok {
			steps = append(steps, Step{Op: OpRemove, Path: f})
		}
	}
	if bin != "" {
		if _, ok := n.Existing[bin]; ok {
			if keepBin {
				kept = append(kept, fmt.Sprintf("%s: K3s's live %s still chains netready and every new pod would fail without it", bin, filepath.Join(n.Paths.ConfDir, PrimaryName)))
			} else {
				steps = append(steps, Step{Op: OpRemove, Path: bin})
			}
		}
	}
	if keepBin && bin != "" {
		// Keep a record of the binary alone, so the next uninstall removes it.
		st := State{Mode: n.State.Mode, Files: []string{bin}, Dirs: n.State.Dirs}
		b, _ := json.MarshalIndent(st, "", "  ")
		steps = append(steps, Step{Op: OpState, Path: n.Paths.State, Data: append(b, '\n'), Why: "the binary still to remove"})
		return steps, kept, nil
	}
	steps = append(steps, Step{Op: OpRemove, Path: n.Paths.State})
	for i := len(n.State.Dirs) - 1; i >= 0; i-- {
		steps = append(steps, Step{Op: OpRmdir, Path: n.State.Dirs[i]})
	}
	return steps, kept, nil
}

// withoutNetready returns a conflist without its netready plugins.
func withoutNetready(conflist []byte) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(conflist, &top); err != nil {
		return nil, err
	}
	var plugins []json.RawMessage
	if err := json.Unmarshal(top["plugins"], &plugins); err != nil {
		return nil, err
	}
	var kept []json.RawMessage
	for _, p := range plugins {
		var t struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(p, &t) == nil && t.Type == "netready" {
			continue
		}
		kept = append(kept, p)
	}
	top["plugins"], _ = json.Marshal(kept)
	return json.Marshal(top)
}

func chainSummaryShort(conflist []byte) string {
	s := chainSummary(conflist)
	return strings.TrimSuffix(s, ":")
}

// Apply makes the steps' changes under root, in order, and returns what it
// did, one line per change. It stops at the first error; what was done
// until then is in done.
func Apply(root string, steps []Step) (done []string, err error) {
	at := func(p string) string { return filepath.Join(root, p) }
	for _, s := range steps {
		switch s.Op {
		case OpMkdir:
			err = os.Mkdir(at(s.Path), 0o755)
		case OpBinary:
			err = InstallBinary(s.From, at(filepath.Dir(s.Path)), filepath.Base(s.Path))
		case OpConflist:
			var dirs []string
			for _, d := range s.BinDirs {
				dirs = append(dirs, at(d))
			}
			_, err = WriteConflist(at(filepath.Dir(s.Path)), filepath.Base(s.Path), s.Data, dirs)
		case OpState, OpFile:
			err = WriteFile(at(filepath.Dir(s.Path)), filepath.Base(s.Path), s.Data, 0o644)
		case OpRemove:
			err = os.Remove(at(s.Path))
			if errors.Is(err, os.ErrNotExist) {
				err = nil
			}
		case OpRmdir:
			err = os.Remove(at(s.Path))
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				done = append(done, fmt.Sprintf("kept the directory %s: it holds files netready install did not put there", s.Path))
				err = nil
				continue
			}
		}
		if err != nil {
			return done, fmt.Errorf("%s: %w", s, err)
		}
		done = append(done, pastTense(s))
	}
	return done, nil
}

func pastTense(s Step) string {
	switch s.Op {
	case OpMkdir:
		return "created the directory " + s.Path
	case OpBinary:
		return "installed " + s.Path
	case OpConflist, OpFile, OpState:
		return "wrote " + s.Path
	case OpRemove:
		return "removed " + s.Path
	case OpRmdir:
		return "removed the directory " + s.Path
	}
	return s.String()
}

// WriteFile writes data to dir/name through a temp file, fsync and rename.
func WriteFile(dir, name string, data []byte, mode os.FileMode) error {
	removeStaleTemps(dir, name)
	tmp, lock, err := writeTemp(dir, name, data, mode)
	if err != nil {
		return err
	}
	defer lock.Close()
	return renameSync(tmp, dir, name)
}

// Reconcile reads the node, plans an install with o and applies it: the
// whole of `netready install` without the printing and the final check,
// for a caller that keeps the owned conflist in step with K3s's chain (a
// node agent calling it when the conf dir changes). It returns the changes
// made (none when the node is already as o says) and the notes.
func Reconcile(o Options) (done, notes []string, err error) {
	node, err := ReadNode(o, o.Binary)
	if err != nil {
		return nil, nil, err
	}
	steps, notes, err := PlanInstall(o, node)
	if err != nil {
		return nil, notes, err
	}
	done, err = Apply(o.Root, steps)
	return done, notes, err
}
