// Package scripts_test runs k3s-node-bootstrap.sh against fake K3s nodes: trees under
// t.TempDir() passed as --root, laid out as a node is before or after K3s is installed. The
// script never needs root for them and never touches the real /etc or /var. As root, one more
// test runs the conflist the script writes through libcni in a simulated node.
package scripts_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/pkg/config"
)

const (
	script      = "k3s-node-bootstrap.sh"
	stableBin   = "/var/lib/rancher/k3s/data/cni"
	oldBin      = "/var/lib/rancher/k3s/data/current/bin"
	conflist    = "/etc/rancher/k3s/netready/10-flannel-netready.conflist"
	dropin      = "/etc/rancher/k3s/config.yaml.d/90-netready.yaml"
	createdDirs = "/etc/rancher/k3s/netready/created-dirs"
	k3sConfig   = "/etc/rancher/k3s/config.yaml"
	liveConf    = "/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist"
	dropinLine  = "flannel-cni-conf: " + conflist + "\n"
)

// k3sDefault is the list K3s writes when flannel-cni-conf is not set.
const k3sDefault = `{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"forceAddress":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}},{"type":"bandwidth","capabilities":{"bandwidth":true}}]}`

// netreadyBin is netready built from this module (plugin/netready) by TestMain, or $NETREADY_BINARY.
var netreadyBin string

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "netready-bootstrap-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// NETREADY_BINARY names a prebuilt netready (such as make build's bin/netready) to test with.
	if netreadyBin = os.Getenv("NETREADY_BINARY"); netreadyBin == "" {
		netreadyBin = filepath.Join(dir, "netready")
		cmd := exec.Command("go", "build", "-trimpath", "-o", netreadyBin, "../plugin/netready")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building netready: %v\n%s", err, out)
			return 1
		}
	}
	// The script validates with `netready explain`; say so plainly when that is missing.
	if out, err := exec.Command(netreadyBin, "explain", "--conf", "../conflist/10-flannel-netready.conflist").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "netready explain, which the script needs, fails: %v\n%s", err, out)
		return 1
	}
	return testbed.Main(m)
}

// node is a fake node root.
type node struct {
	t    *testing.T
	root string
}

func newNode(t *testing.T, dirs ...string) *node {
	t.Helper()
	n := &node{t: t, root: t.TempDir()}
	for _, d := range dirs {
		if err := os.MkdirAll(n.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

func (n *node) path(p string) string { return filepath.Join(n.root, p) }

func (n *node) write(p, content string, mode os.FileMode) {
	n.t.Helper()
	if err := os.MkdirAll(filepath.Dir(n.path(p)), 0o755); err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(n.path(p), []byte(content), mode); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) read(p string) string {
	n.t.Helper()
	b, err := os.ReadFile(n.path(p))
	if err != nil {
		n.t.Fatal(err)
	}
	return string(b)
}

func (n *node) exists(p string) bool {
	_, err := os.Lstat(n.path(p))
	return err == nil
}

// fakeCNI puts a shell script answering CNI VERSION with versions into the bin dir under names
// (all K3s chain plugins when none given).
func (n *node) fakeCNI(dir string, versions string, names ...string) {
	n.t.Helper()
	if len(names) == 0 {
		names = []string{"flannel", "bridge", "host-local", "portmap", "bandwidth", "loopback"}
	}
	for _, name := range names {
		n.write(filepath.Join(dir, name), fakePlugin(versions), 0o755)
	}
}

// fakePlugin answers VERSION like a skel-based plugin. (A script cannot see the argv[0] that
// the script gives K3s's multi-call binary, so it answers under any name.)
func fakePlugin(versions string) string {
	return `#!/bin/sh
[ "$CNI_COMMAND" = VERSION ] || { echo '{"code":4,"msg":"fake: only VERSION"}'; exit 1; }
cat >/dev/null
printf '{"cniVersion":"1.0.0","supportedVersions":[%s]}\n' '` + versions + `'
`
}

const (
	upTo110 = `"0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"`
	upTo100 = `"0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0"`
)

type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// run runs the script with --root (and --binary for an install) plus args.
func (n *node) run(args ...string) result {
	n.t.Helper()
	full := append([]string{script, "--root", n.root}, args...)
	if !slices.Contains(args, "--uninstall") && !slices.Contains(args, "--binary") {
		full = append(full, "--binary", netreadyBin)
	}
	return runScript(n.t, full...)
}

func runScript(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command("bash", args...)
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("running the script: %v", err)
	}
	return r
}

func (n *node) mustRun(args ...string) result {
	n.t.Helper()
	r := n.run(args...)
	if r.code != 0 {
		n.t.Fatalf("%v: %s", args, r)
	}
	return r
}

// entry is one path of a tree: its mode, content (files, link targets) and mtime.
type entry struct {
	mode    fs.FileMode
	content string
	mtime   time.Time
}

func (n *node) snapshot() map[string]entry {
	n.t.Helper()
	tree := map[string]entry{}
	err := filepath.WalkDir(n.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := entry{mode: info.Mode(), mtime: info.ModTime()}
		switch {
		case info.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.content = string(b)
		case info.Mode()&fs.ModeSymlink != 0:
			e.content, _ = os.Readlink(p)
		case info.IsDir():
			e.mtime = time.Time{} // a directory's mtime moves with any temp file in it
		}
		rel, _ := filepath.Rel(n.root, p)
		tree["/"+rel] = e
		return nil
	})
	if err != nil {
		n.t.Fatal(err)
	}
	return tree
}

// diffTrees lists the paths that differ; withMtime also compares file mtimes.
func diffTrees(a, b map[string]entry, withMtime bool) []string {
	var out []string
	for p, ea := range a {
		eb, ok := b[p]
		switch {
		case !ok:
			out = append(out, "removed "+p)
		case ea.mode != eb.mode || ea.content != eb.content:
			out = append(out, "changed "+p)
		case withMtime && !ea.mtime.Equal(eb.mtime):
			out = append(out, "touched "+p)
		}
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			out = append(out, "added "+p)
		}
	}
	slices.Sort(out)
	return out
}

// netreadyEntry parses the written conflist as containerd and netready would.
func netreadyEntry(t *testing.T, path string) (*libcni.NetworkConfigList, *config.Conf) {
	t.Helper()
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		t.Fatalf("libcni: %v", err)
	}
	obj, err := config.FindPlugin(list.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := config.Parse(obj)
	if err != nil {
		t.Fatal(err)
	}
	if last := list.Plugins[len(list.Plugins)-1].Network.Type; last != "netready" {
		t.Errorf("last plugin is %q, want netready", last)
	}
	return list, conf
}

func TestFreshInstall(t *testing.T) {
	shipped, err := os.ReadFile("../conflist/10-flannel-netready.conflist")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		dirs    []string // the node's layout
		args    []string
		wantBin string // where the binary must land
		probes  []string
		skip    []string
		timeout time.Duration
		onTO    config.OnTimeout
	}{
		{name: "before K3s is installed", wantBin: stableBin, skip: []string{"kube-system"}, timeout: 30 * time.Second, onTO: config.Fail},
		{name: "K3s with data/cni", dirs: []string{stableBin, oldBin}, wantBin: stableBin, skip: []string{"kube-system"}, timeout: 30 * time.Second, onTO: config.Fail},
		{name: "older K3s with data/current/bin only", dirs: []string{oldBin}, wantBin: oldBin, skip: []string{"kube-system"}, timeout: 30 * time.Second, onTO: config.Fail},
		{
			name: "--bin-dir", dirs: []string{stableBin}, args: []string{"--bin-dir", "/opt/cni/bin/"},
			wantBin: "/opt/cni/bin", skip: []string{"kube-system"}, timeout: 30 * time.Second, onTO: config.Fail,
		},
		{
			name: "probes, timeout, onTimeout, skips", dirs: []string{stableBin},
			args: []string{
				"--probe", "tcp://10.0.0.5:5432", "--probe=icmp://10.0.0.1", "--probe", "http://[fd00::1]:8080/ready?status=200-204",
				"--timeout", "45s", "--on-timeout=allow", "--skip-namespace", "kube-system", "--skip-namespace", "monitoring",
			},
			wantBin: stableBin, probes: []string{"tcp://10.0.0.5:5432", "icmp://10.0.0.1", "http://[fd00::1]:8080/ready?status=200-204"},
			skip: []string{"kube-system", "monitoring"}, timeout: 45 * time.Second, onTO: config.Allow,
		},
		{name: "skip no namespace", dirs: []string{stableBin}, args: []string{"--skip-namespace", ""}, wantBin: stableBin, timeout: 30 * time.Second, onTO: config.Fail},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t, tt.dirs...)
			r := n.mustRun(tt.args...)

			bin := tt.wantBin + "/netready"
			info, err := os.Stat(n.path(bin))
			if err != nil {
				t.Fatalf("binary not at %s: %v\n%s", bin, err, r)
			}
			if info.Mode().Perm() != 0o755 {
				t.Errorf("%s has mode %v, want 0755", bin, info.Mode().Perm())
			}
			want, _ := os.ReadFile(netreadyBin)
			if n.read(bin) != string(want) {
				t.Errorf("%s is not the --binary", bin)
			}
			for _, other := range []string{stableBin, oldBin} {
				if other != tt.wantBin && n.exists(other+"/netready") {
					t.Errorf("binary also installed into %s", other)
				}
			}

			if got := n.read(dropin); !strings.HasSuffix(got, "\n"+dropinLine) {
				t.Errorf("%s = %q, want a line %q (the node's path, not the --root one)", dropin, got, dropinLine)
			}
			list, conf := netreadyEntry(t, n.path(conflist))
			if list.CNIVersion != "1.0.0" {
				t.Errorf("cniVersion %s, want 1.0.0 with no K3s plugin to ask", list.CNIVersion)
			}
			var probes []string
			for _, p := range conf.Base.Probes {
				probes = append(probes, p.URL)
			}
			if !slices.Equal(probes, tt.probes) || !slices.Equal(conf.Skip.Namespaces, tt.skip) ||
				conf.Base.Timeout != tt.timeout || conf.Base.OnTimeout != tt.onTO {
				t.Errorf("netready entry: probes %q skip %q timeout %s onTimeout %s; want %q %q %s %s",
					probes, conf.Skip.Namespaces, conf.Base.Timeout, conf.Base.OnTimeout, tt.probes, tt.skip, tt.timeout, tt.onTO)
			}
			if !conf.Capabilities["io.kubernetes.cri.pod-annotations"] {
				t.Error("netready entry does not declare the pod-annotations capability")
			}
			if len(tt.args) == 0 && n.read(conflist) != string(shipped) {
				t.Errorf("with default arguments the conflist differs from conflist/10-flannel-netready.conflist:\n%s", n.read(conflist))
			}
			if !strings.Contains(r.stdout, "Apply it: ") {
				t.Errorf("no command to apply the change:\n%s", r)
			}
		})
	}
}

func TestInvalidConfigWritesNothing(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want []string // in stderr
	}{
		{"hostname probe", []string{"--probe", "dns://dns.google/example.com"}, 1, []string{`"probes[0]"`, "not an IP address", "nothing was changed"}},
		{"second probe bad", []string{"--probe", "icmp://10.0.0.1", "--probe", "ftp://10.0.0.1"}, 1, []string{`"probes[1]"`, "unknown scheme"}},
		{"quote and comma injection", []string{"--probe", `tcp://10.0.0.1:80", "icmp://10.0.0.2`}, 1, []string{`"probes[0]"`}},
		{"backslash and control chars", []string{"--probe", "http://10.0.0.1/a\\b\x01\"c"}, 1, []string{`"probes[0]"`}},
		{"duplicate probe", []string{"--probe", "icmp://10.0.0.1", "--probe", "icmp://10.0.0.1"}, 1, []string{`"probes[1]"`}},
		{"timeout above the cap", []string{"--timeout", "5m"}, 1, []string{`"timeout"`, "maximum"}},
		{"timeout not a duration", []string{"--timeout", "soon"}, 1, []string{`"timeout"`}},
		{"bad namespace", []string{"--skip-namespace", `Kube"System`}, 1, []string{"skip.namespaces[0]"}},
		{"on-timeout", []string{"--on-timeout", "retry"}, 2, []string{"--on-timeout wants fail or allow"}},
		{"binary missing", []string{"--binary", "/nonexistent/netready"}, 1, []string{"no such file"}},
		{"binary not netready", []string{"--binary", "/bin/true"}, 1, []string{"does not look like netready"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t, stableBin, "/etc/rancher/k3s")
			n.write(k3sConfig, "node-label: [a=b]\n", 0o600)
			before := n.snapshot()
			r := n.run(tt.args...)
			if r.code != tt.code {
				t.Errorf("exit %d, want %d\n%s", r.code, tt.code, r)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q\n%s", w, r)
				}
			}
			// The binary saw the arguments as the operator typed them: one probe each, no JSON error.
			if strings.Count(r.stderr, `"probes[`) > 1 {
				t.Errorf("the arguments leaked out of their JSON strings (escaping):\n%s", r)
			}
			if strings.Contains(r.stderr, "JSON") {
				t.Errorf("the generated JSON was malformed (escaping):\n%s", r)
			}
			if d := diffTrees(before, n.snapshot(), true); len(d) > 0 {
				t.Errorf("changed the node: %v", d)
			}
		})
	}
}

func TestRefusals(t *testing.T) {
	tests := []struct {
		name   string
		file   string
		text   string
		refuse bool
		want   []string // in stderr
	}{
		{"config.yaml", k3sConfig, "write-kubeconfig-mode: \"0644\"\nflannel-cni-conf: /etc/cni/mine.conflist\n", true,
			[]string{"/etc/rancher/k3s/config.yaml:2: flannel-cni-conf: /etc/cni/mine.conflist", `"type": "netready"`, "explain --conf", "Nothing was changed"}},
		{"another drop-in", "/etc/rancher/k3s/config.yaml.d/50-cni.yaml", "flannel-cni-conf: /etc/cni/mine.conflist\n", true,
			[]string{"/etc/rancher/k3s/config.yaml.d/50-cni.yaml:1:", "merge by hand"}},
		{"a .yml drop-in, quoted key", "/etc/rancher/k3s/config.yaml.d/10-x.YML", "\"flannel-cni-conf\": \"/x.conflist\"\n", true,
			[]string{"10-x.YML:1:"}},
		{"already netready's, elsewhere", k3sConfig, "flannel-cni-conf: " + conflist + "\n", true,
			[]string{"points at netready's own conflist", "delete that setting"}},
		{"systemd unit flag", "/etc/systemd/system/k3s.service", "[Service]\nExecStart=/usr/local/bin/k3s \\\n    server \\\n\t'--flannel-cni-conf=/x.conflist' \\\n", true,
			[]string{"/etc/systemd/system/k3s.service:4:"}},
		{"flannel-backend none", k3sConfig, "flannel-backend: none\n", true, []string{"without flannel"}},
		{"flannel-backend none flag", "/etc/systemd/system/k3s.service", "ExecStart=/usr/local/bin/k3s server '--flannel-backend=none'\n", true, []string{"without flannel"}},
		{"another config file", "/etc/systemd/system/k3s.service.env", "K3S_CONFIG_FILE=/srv/k3s.yaml\n", true, []string{"another file", "K3S_CONFIG_FILE"}},
		{"commented out", k3sConfig, "# flannel-cni-conf: /etc/cni/mine.conflist\n  # flannel-backend: none\n", false, nil},
		{"a .txt beside the drop-ins", "/etc/rancher/k3s/config.yaml.d/notes.txt", "flannel-cni-conf: /x\n", false, nil},
		{"nested key", k3sConfig, "kubelet-arg:\n  flannel-cni-conf: /x\n", false, nil},
		{"flannel-backend vxlan", k3sConfig, "flannel-backend: vxlan\n", false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t, stableBin)
			n.write(tt.file, tt.text, 0o600)
			before := n.snapshot()
			r := n.run("--probe", "icmp://10.0.0.1")
			if !tt.refuse {
				if r.code != 0 {
					t.Fatalf("refused: %s", r)
				}
				return
			}
			if r.code != 1 {
				t.Errorf("exit %d, want 1\n%s", r.code, r)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q\n%s", w, r)
				}
			}
			if d := diffTrees(before, n.snapshot(), true); len(d) > 0 {
				t.Errorf("changed the node: %v", d)
			}
		})
	}
}

func TestCNIVersionFromK3sPlugins(t *testing.T) {
	tests := []struct {
		name  string
		setup func(n *node)
		want  string
	}{
		{"no K3s plugins", func(n *node) {}, "1.0.0"},
		{"all support 1.1.0", func(n *node) { n.fakeCNI(stableBin, upTo110) }, "1.1.0"},
		{"only up to 1.0.0", func(n *node) { n.fakeCNI(stableBin, upTo100) }, "1.0.0"},
		{"one lags", func(n *node) {
			n.fakeCNI(stableBin, upTo110)
			n.fakeCNI(stableBin, upTo100, "portmap")
		}, "1.0.0"},
		{"one fails", func(n *node) {
			n.fakeCNI(stableBin, upTo110)
			n.write(stableBin+"/bandwidth", "#!/bin/sh\nexit 1\n", 0o755)
		}, "1.0.0"},
		{"multi-call cni binary only", func(n *node) { n.fakeCNI(stableBin, upTo110, "cni") }, "1.1.0"},
		{"symlinks to the multi-call binary", func(n *node) {
			n.fakeCNI("/var/lib/rancher/k3s/data/abc123/bin", upTo110, "cni")
			for _, p := range []string{"flannel", "bridge", "host-local", "portmap", "bandwidth"} {
				if err := os.Symlink("../abc123/bin/cni", n.path(stableBin+"/"+p)); err != nil {
					t.Fatal(err)
				}
			}
		}, "1.1.0"},
		{"older K3s bin dir", func(n *node) {
			if err := os.Remove(n.path(stableBin)); err != nil {
				t.Fatal(err)
			}
			n.fakeCNI(oldBin, upTo110)
		}, "1.1.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t, stableBin)
			tt.setup(n)
			r := n.mustRun()
			list, _ := netreadyEntry(t, n.path(conflist))
			if list.CNIVersion != tt.want {
				t.Errorf("cniVersion %s, want %s\n%s", list.CNIVersion, tt.want, r)
			}
		})
	}
}

func TestSecondRunChangesNothing(t *testing.T) {
	for _, layout := range [][]string{nil, {stableBin}, {oldBin}} {
		t.Run(fmt.Sprint(layout), func(t *testing.T) {
			n := newNode(t, layout...)
			n.fakeCNI(stableBin, upTo110)
			args := []string{"--probe", "tcp://10.0.0.5:5432", "--timeout", "20s"}
			n.mustRun(args...)
			first := n.snapshot()
			r := n.mustRun(args...)
			if d := diffTrees(first, n.snapshot(), true); len(d) > 0 {
				t.Errorf("second run changed %v\n%s", d, r)
			}
			if !strings.Contains(r.stdout, "nothing to change") {
				t.Errorf("second run does not say it changed nothing:\n%s", r)
			}

			// A changed argument rewrites the conflist alone.
			n.mustRun("--probe", "tcp://10.0.0.5:5432", "--timeout", "25s")
			if d := diffTrees(first, n.snapshot(), true); !slices.Equal(d, []string{"changed " + conflist}) {
				t.Errorf("changing --timeout changed %v, want the conflist only", d)
			}
		})
	}
}

func TestUninstall(t *testing.T) {
	tests := []struct {
		name   string
		layout func(n *node)
	}{
		{"before K3s", func(n *node) {}},
		{"K3s node with other files", func(n *node) {
			n.fakeCNI(stableBin, upTo110)
			n.write(k3sConfig, "token: x\n", 0o600)
			n.write("/etc/rancher/k3s/config.yaml.d/50-other.yaml", "node-label: [a=b]\n", 0o644)
			n.write(liveConf, k3sDefault, 0o644)
		}},
		{"older K3s", func(n *node) {
			n.fakeCNI(oldBin, upTo100)
			n.write("/etc/rancher/k3s/registries.yaml", "mirrors: {}\n", 0o600)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t)
			tt.layout(n)
			before := n.snapshot()
			n.mustRun("--probe", "icmp://10.0.0.1")
			// Files appear after the install, in the dirs it used: they must stay.
			const later = "/etc/rancher/k3s/config.yaml.d/60-later.yaml"
			n.write(later, "debug: true\n", 0o644)
			r := n.mustRun("--uninstall")
			want := []string{"added " + later}
			for d := filepath.Dir(later); d != "/"; d = filepath.Dir(d) {
				if _, ok := before[d]; !ok {
					want = append(want, "added "+d) // created by the install, holding the later file
				}
			}
			slices.Sort(want)
			if d := diffTrees(before, n.snapshot(), false); !slices.Equal(d, want) {
				t.Errorf("after install and uninstall the node differs: %v, want %v\n%s", d, want, r)
			}
			if err := os.Remove(n.path("/etc/rancher/k3s/config.yaml.d/60-later.yaml")); err != nil {
				t.Fatal(err)
			}
			r = n.mustRun("--uninstall")
			if !strings.Contains(r.stdout, "nothing to remove") {
				t.Errorf("a second uninstall does not say there is nothing to remove:\n%s", r)
			}
		})
	}
}

func TestUninstallLeavesForeignFiles(t *testing.T) {
	n := newNode(t, stableBin)
	n.mustRun()
	n.write("/etc/rancher/k3s/netready/mine.conflist", "{}", 0o644)
	r := n.mustRun("--uninstall")
	for _, p := range []string{conflist, dropin, createdDirs, stableBin + "/netready"} {
		if n.exists(p) {
			t.Errorf("%s left behind", p)
		}
	}
	if !n.exists("/etc/rancher/k3s/netready/mine.conflist") {
		t.Error("removed a file netready did not write")
	}
	if !strings.Contains(r.stderr, "did not put there") {
		t.Errorf("no word about the directory left in place:\n%s", r)
	}
}

// While K3s's live conflist chains netready, the binary must stay: every new pod's ADD would fail.
func TestUninstallKeepsBinaryUntilK3sRestarts(t *testing.T) {
	n := newNode(t, stableBin)
	n.write(liveConf, k3sDefault, 0o644)
	before := n.snapshot()
	n.mustRun()
	n.write(liveConf, n.read(conflist), 0o644) // K3s restarted and copied it

	r := n.mustRun("--uninstall")
	if n.exists(conflist) || n.exists(dropin) {
		t.Errorf("conflist or drop-in left:\n%s", r)
	}
	if !n.exists(stableBin + "/netready") {
		t.Fatalf("binary removed while K3s still chains netready:\n%s", r)
	}
	if !strings.Contains(r.stdout, "Restart K3s") || !strings.Contains(r.stdout, "--uninstall again") {
		t.Errorf("does not say what to do next:\n%s", r)
	}

	n.write(liveConf, k3sDefault, 0o644) // K3s restarted without flannel-cni-conf
	r = n.mustRun("--uninstall")
	if d := diffTrees(before, n.snapshot(), false); len(d) > 0 {
		t.Errorf("after the second uninstall the node differs: %v\n%s", d, r)
	}
}

func TestDryRun(t *testing.T) {
	t.Run("install", func(t *testing.T) {
		n := newNode(t, stableBin)
		before := n.snapshot()
		r := n.mustRun("--dry-run", "--probe", "tcp://10.0.0.5:5432")
		if d := diffTrees(before, n.snapshot(), true); len(d) > 0 {
			t.Errorf("dry run changed %v", d)
		}
		for _, w := range []string{
			"create " + stableBin + "/netready", "create " + conflist, "create " + dropin,
			`|       "probes": ["tcp://10.0.0.5:5432"],`, "| " + dropinLine, "create the directory /etc/rancher/k3s/netready",
		} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("dry run output lacks %q\n%s", w, r)
			}
		}
	})
	t.Run("update", func(t *testing.T) {
		n := newNode(t, stableBin)
		n.mustRun("--probe", "tcp://10.0.0.5:5432")
		before := n.snapshot()
		r := n.mustRun("--dry-run", "--probe", "tcp://10.0.0.6:5432")
		if d := diffTrees(before, n.snapshot(), true); len(d) > 0 {
			t.Errorf("dry run changed %v", d)
		}
		for _, w := range []string{"update " + conflist, `-      "probes": ["tcp://10.0.0.5:5432"],`, `+      "probes": ["tcp://10.0.0.6:5432"],`} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("dry run output lacks %q\n%s", w, r)
			}
		}
		if strings.Contains(r.stdout, "update "+dropin) || strings.Contains(r.stdout, "netready (mode") {
			t.Errorf("dry run would rewrite unchanged files:\n%s", r)
		}
	})
	t.Run("uninstall", func(t *testing.T) {
		n := newNode(t, stableBin)
		n.mustRun()
		before := n.snapshot()
		r := n.mustRun("--uninstall", "--dry-run")
		if d := diffTrees(before, n.snapshot(), true); len(d) > 0 {
			t.Errorf("dry run changed %v", d)
		}
		for _, w := range []string{"remove " + conflist, "remove " + dropin, "remove " + stableBin + "/netready"} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("dry run output lacks %q\n%s", w, r)
			}
		}
	})
}

func TestUsage(t *testing.T) {
	root := t.TempDir()
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"help", []string{"--help"}, 0, "Usage:"},
		{"-h", []string{"-h"}, 0, "--skip-namespace NS"},
		{"unknown option", []string{"--root", root, "--probes", "x"}, 2, "unknown argument '--probes'"},
		{"missing value", []string{"--root", root, "--probe"}, 2, "--probe needs a value"},
		{"uninstall with probes", []string{"--root", root, "--uninstall", "--probe", "icmp://10.0.0.1"}, 2, "--uninstall takes no --probe"},
		{"restart with root", []string{"--root", root, "--restart"}, 2, "cannot be combined with --root"},
		{"relative bin dir", []string{"--root", root, "--bin-dir", "bin"}, 2, "absolute path"},
		{"root not a dir", []string{"--root", filepath.Join(root, "nope")}, 2, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runScript(t, append([]string{script}, tt.args...)...)
			if r.code != tt.code || !strings.Contains(r.stdout+r.stderr, tt.want) {
				t.Errorf("exit %d, want %d with %q\n%s", r.code, tt.code, tt.want, r)
			}
		})
	}
	if entries, _ := os.ReadDir(root); len(entries) > 0 {
		t.Errorf("usage errors wrote into the root: %v", entries)
	}
}

// The default --binary is netready beside the script (the release tarball's layout).
func TestDefaultBinaryBesideScript(t *testing.T) {
	dir := t.TempDir()
	for src, dst := range map[string]string{script: "k3s-node-bootstrap.sh", netreadyBin: "netready"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	n := newNode(t, stableBin)
	r := runScript(t, filepath.Join(dir, "k3s-node-bootstrap.sh"), "--root", n.root)
	if r.code != 0 || !n.exists(stableBin+"/netready") {
		t.Errorf("install with the binary beside the script: %s", r)
	}
}

func TestShellcheck(t *testing.T) {
	sc, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
	}
	if out, err := exec.Command(sc, "--shell=bash", "--severity=style", script).CombinedOutput(); err != nil {
		t.Errorf("shellcheck %s: %v\n%s", script, err, out)
	}
}

// TestWrittenConflistGatesPod installs into a fake root whose bin dir holds the real reference
// plugins (and the flannel test double), then runs the conflist the script wrote through libcni in
// a simulated K3s node: a pod waits for its probe, a kube-system pod does not, and since those
// plugins speak CNI 1.1.0 the list says so and STATUS reaches netready.
func TestWrittenConflistGatesPod(t *testing.T) {
	testbed.SkipUnlessRoot(t)
	n := newNode(t, stableBin)
	if err := testbed.Build(n.path(stableBin)); err != nil {
		t.Fatal(err)
	}
	r := n.mustRun("--probe", testbed.ProbeDB, "--timeout", "10s")
	list, _ := netreadyEntry(t, n.path(conflist))
	if list.CNIVersion != "1.1.0" {
		t.Errorf("cniVersion %s with the reference plugins, want 1.1.0\n%s", list.CNIVersion, r)
	}

	bed := testbed.New(t, testbed.Options{BinDir: n.path(stableBin)})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	netList, err := bed.ConfListFile(n.path(conflist))
	if err != nil {
		t.Fatal(err)
	}
	if err := bed.Status(ctx, netList); err != nil {
		t.Errorf("STATUS: %v", err)
	}

	fault, err := bed.BlockRouter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	system, err := bed.NewPod(ctx)
	if err != nil {
		t.Fatal(err)
	}
	system.Namespace, system.Name = "kube-system", "coredns-1"
	start := time.Now()
	if _, err := bed.Add(ctx, netList, system); err != nil {
		t.Fatalf("ADD of a kube-system pod: %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("kube-system pod waited %s while the db was blocked: it should be skipped", took)
	}

	opened := fault.OpenAfter(500 * time.Millisecond)
	pod, err := bed.NewPod(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pod.Namespace, pod.Name = "default", "app-0"
	if _, err := bed.Add(ctx, netList, pod); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	returned := time.Now()
	o := <-opened
	if o.Err != nil {
		t.Fatal(o.Err)
	}
	if returned.Before(o.At) {
		t.Errorf("ADD returned %s before the path to %s opened: the probe did not gate it", o.At.Sub(returned), testbed.ProbeDB)
	}
	if wait := returned.Sub(o.At); wait > time.Second {
		t.Errorf("ADD returned %s after the path opened", wait)
	}
	for _, p := range []*testbed.Pod{pod, system} {
		if err := bed.Del(ctx, netList, p); err != nil {
			t.Errorf("DEL: %v", err)
		}
	}
}
