package install

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/containernetworking/cni/libcni"
)

// ReadNode reads what PlanInstall and PlanUninstall decide from: the running
// K3s, its paths, its live chain, the files install writes, the install
// record. binary is the binary to install ("" for uninstall). Errors are
// reads that failed for another reason than a missing file.
func ReadNode(o Options, binary string) (*Node, error) {
	n := &Node{K3s: FindK3s(o.Root), Existing: map[string][]byte{}}
	dataDir := o.DataDir
	if dataDir == "" {
		dataDir = DefaultDataDir
		if n.K3s != nil {
			dataDir = n.K3s.DataDir
		}
	}
	n.Paths = PathsFor(o.Root, dataDir, o.BinDir)
	at := func(p string) string { return filepath.Join(o.Root, p) }

	var err error
	if n.Primary, err = readIfExists(at(filepath.Join(n.Paths.ConfDir, PrimaryName))); err != nil {
		return nil, err
	}
	if binary != "" {
		if n.Binary, err = os.ReadFile(binary); err != nil {
			return nil, fmt.Errorf("cannot read the binary to install: %v; pass --binary PATH", err)
		}
	}
	if n.KubeletKubeconfig, err = readIfExists(at(filepath.Join(n.Paths.DataDir, kubeletKubeconfigInDataDir))); err != nil {
		return nil, err
	}
	if raw, err := readIfExists(at(n.Paths.State)); err != nil {
		return nil, err
	} else if raw != nil {
		n.State = &State{}
		if err := json.Unmarshal(raw, n.State); err != nil {
			return nil, fmt.Errorf("netready's install record %s is not valid JSON (%v): restore it, or remove it and what it listed by hand", n.Paths.State, err)
		}
		n.Existing[n.Paths.State] = raw
	}
	files := []string{n.binPath(), filepath.Join(n.Paths.ConfDir, OwnedName), FlannelConflist, FlannelDropIn}
	if n.State != nil {
		files = append(files, n.State.Files...)
	}
	for _, f := range files {
		b, err := readIfExists(at(f))
		if err != nil {
			return nil, err
		}
		if b != nil {
			n.Existing[f] = b
		}
	}

	if files, err := libcni.ConfFiles(at(n.Paths.ConfDir), ConfExtensions); err == nil {
		for _, f := range files {
			if b := filepath.Base(f); b != OwnedName && b != PrimaryName {
				n.OtherConfs = append(n.OtherConfs, b)
			}
		}
	}
	n.NoFlannel = noFlannel(o.Root, n.K3s)

	need := []string{n.Paths.BinDir, n.Paths.ConfDir}
	if o.Settings.LogFile != "" {
		need = append(need, filepath.Dir(o.Settings.LogFile))
	}
	if o.Mode == ModeFlannelCNIConf {
		need = append(need, filepath.Dir(FlannelConflist), K3sConfigDropInDir)
		n.CNIConfSetIn = flannelCNIConfSettings(o.Root)
	}
	seen := map[string]bool{}
	for _, d := range need {
		var chain []string
		for p := filepath.Clean(d); p != "/" && p != "." && !isDir(at(p)); p = filepath.Dir(p) {
			chain = append([]string{p}, chain...)
		}
		for _, p := range chain {
			if !seen[p] {
				seen[p] = true
				n.Missing = append(n.Missing, p)
			}
		}
	}
	return n, nil
}

func readIfExists(p string) ([]byte, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %v (run as root)", p, err)
	}
	return b, nil
}

// cniConfSetting is compiled on first use: this package is linked into the
// binary every CNI call execs, and a regexp compiled at init would cost each
// of them (70 allocations) for a command run once per node.
var cniConfSetting = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^\s*["']?flannel-cni-conf\+?["']?\s*:|(^|[\s"'])--flannel-cni-conf([=\s"']|$)`)
})

// flannelCNIConfSettings lists where flannel-cni-conf is set outside
// netready's own drop-in: K3s's config file and drop-ins, and its service
// definitions and env files.
func flannelCNIConfSettings(root string) []string {
	var files []string
	for _, g := range []string{
		DefaultK3sConfig, K3sConfigDropInDir + "/*.yaml", K3sConfigDropInDir + "/*.yml",
		"/etc/systemd/system/k3s*.service", "/etc/systemd/system/k3s*.service.env",
		"/etc/systemd/system/k3s*.service.d/*.conf", "/etc/init.d/k3s*", "/etc/rancher/k3s/k3s*.env",
	} {
		m, _ := filepath.Glob(filepath.Join(root, g))
		files = append(files, m...)
	}
	sort.Strings(files)
	var found []string
	for _, f := range files {
		node := strings.TrimPrefix(f, root)
		if node == FlannelDropIn {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for i, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			if cniConfSetting().MatchString(line) {
				found = append(found, fmt.Sprintf("%s:%d: %s", node, i+1, strings.TrimSpace(line)))
			}
		}
	}
	return found
}

// noFlannel says where K3s is told to run without flannel (flannel-backend
// none: no 10-flannel.conflist, another CNI's chain instead), or "".
func noFlannel(root string, k *K3s) string {
	if k != nil {
		if v, ok := flagValue(k.Args, "--flannel-backend"); ok && v == "none" {
			return fmt.Sprintf("k3s (pid %d) runs with --flannel-backend=none", k.PID)
		}
	}
	files := []string{DefaultK3sConfig}
	for _, g := range []string{K3sConfigDropInDir + "/*.yaml", K3sConfigDropInDir + "/*.yml"} {
		m, _ := filepath.Glob(filepath.Join(root, g))
		for _, f := range m {
			files = append(files, strings.TrimPrefix(f, root))
		}
	}
	for _, f := range files {
		if b, err := os.ReadFile(filepath.Join(root, f)); err == nil {
			if v, ok := yamlTopLevel(b, "flannel-backend"); ok && v == "none" {
				return f + " sets flannel-backend: none"
			}
		}
	}
	return ""
}
