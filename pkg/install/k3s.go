package install

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Paths K3s uses by default.
const (
	DefaultDataDir     = "/var/lib/rancher/k3s"
	DefaultK3sConfig   = "/etc/rancher/k3s/config.yaml"
	DefaultLogFile     = "/var/log/netready/netready.log"
	confDirInDataDir   = "agent/etc/cni/net.d"
	stableBinInData    = "data/cni"         // recent K3s: stable, meant for extra plugins
	currentBinInData   = "data/current/bin" // older K3s: replaced at every K3s upgrade
	stateFileInDataDir = "agent/etc/cni/netready-install.state"
)

// K3s is a running k3s server or agent, as found in /proc.
type K3s struct {
	PID         int
	Role        string   // "server" or "agent"
	Args        []string // its command line
	DataDir     string   // as the node sees it
	DataDirFrom string   // where DataDir came from, for messages
	Unit        string   // the systemd unit in its cgroup ("k3s.service"), or ""
}

// FindK3s looks for a running k3s server or agent among root/proc/*/cmdline,
// whatever started it (systemd, OpenRC, a shell), and reads its data-dir from
// its flags or its config file. It returns nil when none runs.
func FindK3s(root string) *K3s {
	procs, _ := filepath.Glob(filepath.Join(root, "proc", "[0-9]*", "cmdline"))
	var found []*K3s
	for _, p := range procs {
		raw, err := os.ReadFile(p)
		if err != nil || len(raw) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		role := k3sRole(args)
		if role == "" {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		k := &K3s{PID: pid, Role: role, Args: args}
		k.DataDir, k.DataDirFrom = dataDir(root, args, readEnv(filepath.Join(filepath.Dir(p), "environ")))
		if cg, err := os.ReadFile(filepath.Join(filepath.Dir(p), "cgroup")); err == nil {
			k.Unit = systemdUnit(cg)
		}
		found = append(found, k)
	}
	if len(found) == 0 {
		return nil
	}
	// K3s's children (containerd, its shims) are not "k3s server"; of several
	// k3s processes the lowest pid is the one that started the others.
	sort.Slice(found, func(i, j int) bool { return found[i].PID < found[j].PID })
	return found[0]
}

// k3sRole returns "server" or "agent" when args are a k3s server or agent
// command line ("/usr/local/bin/k3s server ...", a title rewritten into one
// string, or K3s's staged <data-dir>/data/<hash>/bin/k3s-server), else "".
func k3sRole(args []string) string {
	if len(args) == 0 {
		return ""
	}
	fields := args
	if len(args) == 1 { // a process that rewrote its title into one string
		fields = strings.Fields(args[0])
	}
	switch base := filepath.Base(fields[0]); {
	case base == "k3s" && len(fields) >= 2 && (fields[1] == "server" || fields[1] == "agent"):
		return fields[1]
	case base == "k3s-server" || base == "k3s-agent": // K3s's staged binaries, exec'd by /usr/local/bin/k3s
		return strings.TrimPrefix(base, "k3s-")
	}
	return ""
}

// flagValue returns the value of a flag given as "--name v", "--name=v",
// "-n v" or "-n=v" (the last occurrence wins, as in K3s's flag parser).
func flagValue(args []string, names ...string) (string, bool) {
	var val string
	var ok bool
	for i := 0; i < len(args); i++ {
		for _, n := range names {
			if args[i] == n && i+1 < len(args) {
				val, ok = args[i+1], true
			} else if strings.HasPrefix(args[i], n+"=") {
				val, ok = strings.TrimPrefix(args[i], n+"="), true
			}
		}
	}
	return val, ok
}

// dataDir resolves K3s's data-dir: its --data-dir/-d flag, else data-dir in
// its config file (--config/-c, K3S_CONFIG_FILE, or config.yaml) and the
// drop-ins beside it, else the default.
func dataDir(root string, args []string, env map[string]string) (dir, from string) {
	if v, ok := flagValue(args, "--data-dir", "-d"); ok {
		return v, "its --data-dir flag"
	}
	cfg := DefaultK3sConfig
	if v, ok := flagValue(args, "--config", "-c"); ok {
		cfg = v
	} else if v := env["K3S_CONFIG_FILE"]; v != "" {
		cfg = v
	}
	files := []string{cfg}
	drop, _ := filepath.Glob(filepath.Join(root, cfg+".d", "*.yaml"))
	dropYml, _ := filepath.Glob(filepath.Join(root, cfg+".d", "*.yml"))
	drop = append(drop, dropYml...)
	sort.Strings(drop)
	for _, d := range drop {
		files = append(files, strings.TrimPrefix(d, root))
	}
	dir, from = DefaultDataDir, "K3s's default"
	for _, f := range files { // later files override earlier ones, as in K3s
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			continue
		}
		if v, ok := yamlTopLevel(b, "data-dir"); ok {
			dir, from = v, f
		}
	}
	return dir, from
}

// yamlTopLevel reads a top-level "key: value" scalar from a K3s config file
// (flat YAML of flag names). Quotes are removed, comments ignored.
func yamlTopLevel(b []byte, key string) (string, bool) {
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, key) && !strings.HasPrefix(line, `"`+key+`"`) && !strings.HasPrefix(line, `'`+key+`'`) {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.Trim(k, `"' `) != key {
			continue
		}
		v = strings.TrimSpace(v)
		if i := strings.Index(v, " #"); i >= 0 {
			v = strings.TrimSpace(v[:i])
		}
		v = strings.Trim(v, `"'`)
		if v != "" {
			return v, true
		}
	}
	return "", false
}

func readEnv(path string) map[string]string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	env := map[string]string{}
	for _, kv := range bytes.Split(raw, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			env[k] = v
		}
	}
	return env
}

// systemdUnit returns the k3s service unit named in a /proc/PID/cgroup.
func systemdUnit(cgroup []byte) string {
	for _, line := range strings.Split(string(cgroup), "\n") {
		for _, part := range strings.Split(line, "/") {
			if strings.HasPrefix(part, "k3s") && strings.HasSuffix(part, ".service") {
				return part
			}
		}
	}
	return ""
}

// NodePaths are K3s's CNI directories on a node, as the node sees them.
type NodePaths struct {
	DataDir string
	ConfDir string // <data-dir>/agent/etc/cni/net.d
	BinDir  string // where netready goes
	// BinDirs are where containerd looks for plugins (K3s configures both).
	BinDirs []string
	// State is the record of what install made, for an exact uninstall.
	State string
	// Note says something the operator must know about BinDir, or "".
	Note string
}

// PathsFor returns K3s's CNI paths for dataDir. binDir, when given, wins;
// else <data-dir>/data/cni when it exists (recent K3s), else
// <data-dir>/data/current/bin when that exists (older K3s), else data/cni.
func PathsFor(root, dataDir, binDir string) NodePaths {
	p := NodePaths{
		DataDir: dataDir,
		ConfDir: filepath.Join(dataDir, confDirInDataDir),
		State:   filepath.Join(dataDir, stateFileInDataDir),
	}
	stable := filepath.Join(dataDir, stableBinInData)
	current := filepath.Join(dataDir, currentBinInData)
	switch {
	case binDir != "":
		p.BinDir = binDir
	case isDir(filepath.Join(root, stable)):
		p.BinDir = stable
	case isDir(filepath.Join(root, current)):
		p.BinDir = current
		p.Note = "this K3s has no " + stable + ", only " + current + ", which K3s replaces at every upgrade: run netready install again right after each K3s upgrade"
	default:
		p.BinDir = stable
	}
	p.BinDirs = []string{p.BinDir}
	for _, d := range []string{stable, current} {
		if d != p.BinDir && isDir(filepath.Join(root, d)) {
			p.BinDirs = append(p.BinDirs, d)
		}
	}
	return p
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
