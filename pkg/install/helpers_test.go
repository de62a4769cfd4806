package install

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// k3sLive is K3s's chain as a v1.35 node writes it (K3S.md).
var k3sLive = string(K3sChain)

// fakeNode is a K3s node's file tree under a temp root.
type fakeNode struct {
	t    *testing.T
	root string
	bin  string // a fake netready binary to install, outside root
}

// newFakeNode lays out K3s's dirs with its plugins and, when live is not
// empty, its live 10-flannel.conflist.
func newFakeNode(t *testing.T, live string) *fakeNode {
	t.Helper()
	n := &fakeNode{t: t, root: t.TempDir()}
	for _, p := range []string{"flannel", "portmap", "bandwidth", "bridge", "host-local"} {
		n.write(DefaultDataDir+"/data/cni/"+p, "#!/bin/sh\n", 0o755)
	}
	n.mkdir(DefaultDataDir + "/agent/etc/cni/net.d")
	if live != "" { // K3s has started: its chain and the kubelet's kubeconfig are there
		n.write(DefaultDataDir+"/agent/etc/cni/net.d/"+PrimaryName, live, 0o644)
		n.write(DefaultDataDir+"/"+kubeletKubeconfigInDataDir, k3sKubeletKubeconfig("https://127.0.0.1:6443", DefaultDataDir), 0o600)
	}
	n.bin = filepath.Join(t.TempDir(), "netready")
	if err := os.WriteFile(n.bin, []byte("netready build 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return n
}

// k3sKubeletKubeconfig is the kubelet.kubeconfig K3s writes (its
// kubeconfig template, k3s pkg/daemons/control/deps).
func k3sKubeletKubeconfig(server, dataDir string) string {
	return `apiVersion: v1
clusters:
- cluster:
    server: ` + server + `
    certificate-authority: ` + dataDir + `/agent/server-ca.crt
  name: local
contexts:
- context:
    cluster: local
    namespace: default
    user: user
  name: Default
current-context: Default
kind: Config
preferences: {}
users:
- name: user
  user:
    client-certificate: ` + dataDir + `/agent/client-kubelet.crt
    client-key: ` + dataDir + `/agent/client-kubelet.key
`
}

func (n *fakeNode) path(p string) string { return filepath.Join(n.root, p) }

func (n *fakeNode) mkdir(p string) {
	n.t.Helper()
	if err := os.MkdirAll(n.path(p), 0o755); err != nil {
		n.t.Fatal(err)
	}
}

func (n *fakeNode) write(p, content string, mode os.FileMode) {
	n.t.Helper()
	n.mkdir(filepath.Dir(p))
	if err := os.WriteFile(n.path(p), []byte(content), mode); err != nil {
		n.t.Fatal(err)
	}
}

func (n *fakeNode) read(p string) string {
	n.t.Helper()
	b, err := os.ReadFile(n.path(p))
	if err != nil {
		n.t.Fatal(err)
	}
	return string(b)
}

func (n *fakeNode) exists(p string) bool {
	_, err := os.Lstat(n.path(p))
	return err == nil
}

// opts are install's options with the CLI's defaults, under this root.
func (n *fakeNode) opts() Options {
	return Options{Root: n.root, Binary: n.bin, Mode: ModeOwned, Settings: Settings{
		Timeout: "", OnTimeout: "fail", SkipNamespaces: []string{"kube-system"}, LogFile: DefaultLogFile,
	}}
}

// plan reads the node and plans an install.
func (n *fakeNode) plan(o Options) ([]Step, []string, error) {
	n.t.Helper()
	node, err := ReadNode(o, o.Binary)
	if err != nil {
		n.t.Fatalf("ReadNode: %v", err)
	}
	return PlanInstall(o, node)
}

// install plans and applies; it fails the test on any error.
func (n *fakeNode) install(o Options) []Step {
	n.t.Helper()
	steps, _, err := n.plan(o)
	if err != nil {
		n.t.Fatalf("PlanInstall: %v", err)
	}
	if _, err := Apply(n.root, steps); err != nil {
		n.t.Fatalf("Apply: %v", err)
	}
	return steps
}

func (n *fakeNode) uninstall(o Options) ([]Step, []string) {
	n.t.Helper()
	node, err := ReadNode(o, "")
	if err != nil {
		n.t.Fatalf("ReadNode: %v", err)
	}
	steps, kept, err := PlanUninstall(node)
	if err != nil {
		n.t.Fatalf("PlanUninstall: %v", err)
	}
	if _, err := Apply(n.root, steps); err != nil {
		n.t.Fatalf("Apply: %v", err)
	}
	return steps, kept
}

// snapshot maps every path under root to its type, mode and content hash.
func (n *fakeNode) snapshot() map[string]string {
	n.t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(n.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		v := fi.Mode().String()
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		m[strings.TrimPrefix(p, n.root)] = v
		return nil
	})
	if err != nil {
		n.t.Fatal(err)
	}
	return m
}

func diffSnapshots(a, b map[string]string) []string {
	var d []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			d = append(d, "gone: "+k)
		} else if v != w {
			d = append(d, "changed: "+k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, "new: "+k)
		}
	}
	slices.Sort(d)
	return d
}

func ops(steps []Step) []string {
	var s []string
	for _, st := range steps {
		s = append(s, string(st.Op)+" "+st.Path)
	}
	return s
}

const (
	confDir = DefaultDataDir + "/agent/etc/cni/net.d"
	owned   = confDir + "/" + OwnedName
	binPath = DefaultDataDir + "/data/cni/netready"
	state   = DefaultDataDir + "/" + stateFileInDataDir
)
