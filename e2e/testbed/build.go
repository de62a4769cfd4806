package testbed

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/netready/netready/internal/testbin"
)

// Plugin binary names, as CNI looks them up by "type".
const (
	Bridge    = "bridge"
	HostLocal = "host-local"
	Portmap   = "portmap"
	Bandwidth = "bandwidth"
	Loopback  = "loopback"
	Flannel   = "flannel"
	Netready  = "netready"
)

const modulePath = "github.com/netready/netready"

// importPaths are the packages built for each plugin: the reference plugins pinned in go.mod,
// the flannel test double and netready itself.
var importPaths = map[string]string{
	Bridge:    "github.com/containernetworking/plugins/plugins/main/bridge",
	HostLocal: "github.com/containernetworking/plugins/plugins/ipam/host-local",
	Portmap:   "github.com/containernetworking/plugins/plugins/meta/portmap",
	Bandwidth: "github.com/containernetworking/plugins/plugins/meta/bandwidth",
	Loopback:  "github.com/containernetworking/plugins/plugins/main/loopback",
	Flannel:   modulePath + "/e2e/flannel",
	Netready:  modulePath + "/plugin/netready",
}

// K3sPlugins are the binaries K3s's flannel chain needs (loopback too, as the kubelet's runtime
// sets up lo with it).
var K3sPlugins = []string{Flannel, Bridge, HostLocal, Portmap, Bandwidth, Loopback}

// WithNetready is K3sPlugins plus netready.
var WithNetready = append(append([]string(nil), K3sPlugins...), Netready)

// built remembers, per process, which plugins are already in which dir, so that many beds share
// one build.
var (
	buildMu sync.Mutex
	// guarded by buildMu
	built = map[string]bool{} // dir + "\x00" + plugin
)

// Build compiles plugins (default K3sPlugins) into dir with `go build` (CGO_ENABLED=0, static, as
// a node's bin dir expects), from the module's own go.mod so that the pinned versions are used.
// A plugin already built into dir by this process is not built again. netready is built on its
// own so that, while it does not compile, only callers that ask for it get an error.
func Build(dir string, plugins ...string) error {
	if len(plugins) == 0 {
		plugins = K3sPlugins
	}
	buildMu.Lock()
	defer buildMu.Unlock()

	var pkgs, todo []string
	wantNetready := false
	for _, p := range plugins {
		path, ok := importPaths[p]
		if !ok {
			return fmt.Errorf("testbed.Build: unknown plugin %q (known: bridge, host-local, portmap, bandwidth, loopback, flannel, netready)", p)
		}
		if built[dir+"\x00"+p] && fileExists(filepath.Join(dir, p)) {
			continue
		}
		if p == Netready {
			wantNetready = true
			continue
		}
		pkgs = append(pkgs, path)
		todo = append(todo, p)
	}
	if len(pkgs) == 0 && !wantNetready {
		return nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if len(pkgs) > 0 {
		if err := goBuild(root, dir, pkgs...); err != nil {
			return fmt.Errorf("testbed.Build %s: %w", strings.Join(todo, ", "), err)
		}
		for _, p := range todo {
			built[dir+"\x00"+p] = true
		}
	}
	if wantNetready {
		if err := goBuild(root, dir, importPaths[Netready]); err != nil {
			return fmt.Errorf("testbed.Build: netready (%s) does not build: %w", importPaths[Netready], err)
		}
		built[dir+"\x00"+Netready] = true
	}
	return nil
}

func goBuild(root, dir string, pkgs ...string) error {
	// A dir: go build names each binary after its package.
	return testbin.GoBuild(root, dir+string(filepath.Separator), nil, nil, pkgs...)
}

// ModuleRoot returns the directory of netready's go.mod: from `go env GOMOD` in the working dir,
// else by walking up from the working dir.
func ModuleRoot() (string, error) {
	if b, err := exec.Command("go", "env", "GOMOD").Output(); err == nil {
		gomod := strings.TrimSpace(string(b))
		if isOurGoMod(gomod) {
			return filepath.Dir(gomod), nil
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if isOurGoMod(filepath.Join(dir, "go.mod")) {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("testbed: no go.mod of module %s in %s or above; run from the netready checkout or pass a built bin dir", modulePath, wd)
		}
	}
}

func isOurGoMod(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if line := strings.TrimSpace(s.Text()); strings.HasPrefix(line, "module ") {
			return strings.TrimSpace(strings.TrimPrefix(line, "module ")) == modulePath
		}
	}
	return false
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
