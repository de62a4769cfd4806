// Package scripts_test runs k3s-node-bootstrap.sh, the thin wrapper around
// `netready install` and `netready uninstall`, against fake K3s nodes: trees
// under t.TempDir() passed as --root. What install decides is tested in
// pkg/install; here: that the wrapper finds the binary in both layouts,
// passes the arguments and exit codes on, maps --uninstall, and, as root,
// that the chain it installs gates a pod when libcni loads the conf dir's
// first conflist, as containerd does.
package scripts_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/pkg/install"

	"github.com/netready/netready/internal/testbin"
)

const (
	script   = "k3s-node-bootstrap.sh"
	binDir   = "/var/lib/rancher/k3s/data/cni"
	confDir  = "/var/lib/rancher/k3s/agent/etc/cni/net.d"
	owned    = confDir + "/" + install.OwnedName
	liveConf = confDir + "/" + install.PrimaryName
)

// k3sLive is the list K3s writes; 1.1.0 so that STATUS reaches netready.
var k3sLive = string(testbed.K3sConflist("1.1.0"))

// netreadyBin is netready built from this module by TestMain, or $NETREADY_BINARY.
var netreadyBin string

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "netready-bootstrap-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if netreadyBin = os.Getenv("NETREADY_BINARY"); netreadyBin == "" {
		netreadyBin = filepath.Join(dir, "netready")
		if err := testbin.GoBuild(".", netreadyBin, nil, nil, testbin.NetreadyPkg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return testbed.Main(m)
}

// layout copies the script and (unless binRel is "") the binary into a
// fresh dir, the binary at binRel from the script's dir, and returns the
// script's path.
func layout(t *testing.T, binRel string) string {
	t.Helper()
	dir := t.TempDir()
	scriptPath := filepath.Join(dir, "scripts", script)
	copyFile(t, script, scriptPath)
	if binRel != "" {
		copyFile(t, netreadyBin, filepath.Join(dir, "scripts", binRel))
	}
	return scriptPath
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// fakeNode is a K3s node's tree: its plugins (fake unless real is given) and its live chain.
func fakeNode(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, p := range []string{"flannel", "portmap", "bandwidth"} {
		copyFile(t, "/dev/null", filepath.Join(root, binDir, p))
	}
	copyFile(t, "/dev/null", filepath.Join(root, liveConf))
	if err := os.WriteFile(filepath.Join(root, liveConf), []byte(k3sLive), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, scriptPath string, args ...string) result {
	t.Helper()
	cmd := exec.Command(scriptPath, args...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	r := result{stdout: o.String(), stderr: e.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return r
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func TestWrapperInstallUninstall(t *testing.T) {
	for name, binRel := range map[string]string{"release tarball": "netready", "checkout": "../bin/netready"} {
		t.Run(name, func(t *testing.T) {
			s := layout(t, binRel)
			root := fakeNode(t)
			r := run(t, s, "--root", root, "--probe", "tcp://10.15.21.167:5432", "--log-file", "")
			if r.code != 0 || !strings.Contains(r.stdout, "chains netready last") {
				t.Fatalf("install: %+v", r)
			}
			if got, _ := os.ReadFile(filepath.Join(root, binDir, "netready")); len(got) == 0 {
				t.Fatal("the binary the wrapper found was not installed")
			}
			first, ok, why := install.FirstChainHasNetready(filepath.Join(root, confDir))
			if !ok || filepath.Base(first) != install.OwnedName {
				t.Fatalf("first conflist %s: %v %s", first, ok, why)
			}
			if r := run(t, s, "--root", root, "--probe", "tcp://10.15.21.167:5432", "--log-file", ""); r.code != 0 || !strings.Contains(r.stdout, "nothing to change") {
				t.Fatalf("second install: %+v", r)
			}
			r = run(t, s, "--uninstall", "--root", root)
			if r.code != 0 || exists(filepath.Join(root, owned)) || exists(filepath.Join(root, binDir, "netready")) {
				t.Fatalf("uninstall: %+v", r)
			}
		})
	}
}

func TestWrapperPassesExitCodesAndErrors(t *testing.T) {
	s := layout(t, "netready")
	root := fakeNode(t)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"usage error", []string{"--root", root, "--mode", "nope"}, 2, "--mode wants owned or flannel-cni-conf"},
		{"unknown flag", []string{"--root", root, "--probes", "x"}, 2, "flag provided but not defined: -probes"},
		{"refusal", []string{"--root", root, "--probe", "tcp://db:5432"}, 1, "not an IP address"},
		{"not in force", []string{"--root", root, "--mode", "flannel-cni-conf"}, 3, "NOT IN FORCE"},
		{"uninstall takes no probe", []string{"--uninstall", "--root", root, "--probe", "icmp://10.0.0.1"}, 2, "flag provided but not defined: -probe"},
		{"help", []string{"--help"}, 0, "netready install [--probe URL ...]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, s, tt.args...)
			if r.code != tt.code || !strings.Contains(r.stdout+r.stderr, tt.want) {
				t.Fatalf("exit %d, want %d with %q\n%+v", r.code, tt.code, tt.want, r)
			}
		})
	}
}

func TestWrapperWithoutBinary(t *testing.T) {
	r := run(t, layout(t, ""), "--root", t.TempDir())
	if r.code != 1 || !strings.Contains(r.stderr, "no netready binary beside this script") {
		t.Fatalf("%+v", r)
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

// TestInstalledChainGatesPod installs through the wrapper into a fake root
// whose bin dir holds the real reference plugins (and the flannel test
// double), then loads the conf dir's first conflist with libcni, as
// containerd does, in a simulated K3s node: a pod waits for its probe, a
// kube-system pod does not, and STATUS reaches netready through the 1.1.0
// list that K3s's chain declared.
func TestInstalledChainGatesPod(t *testing.T) {
	testbed.SkipUnlessRoot(t)
	root := t.TempDir()
	if err := testbed.Build(filepath.Join(root, binDir)); err != nil {
		t.Fatal(err)
	}
	copyFile(t, "/dev/null", filepath.Join(root, liveConf))
	os.WriteFile(filepath.Join(root, liveConf), []byte(k3sLive), 0o644)
	logFile := filepath.Join(t.TempDir(), "netready.log")
	r := run(t, layout(t, "netready"), "--root", root, "--probe", testbed.ProbeDB, "--timeout", "10s", "--log-file", logFile)
	if r.code != 0 {
		t.Fatalf("install: %+v", r)
	}
	first, _, err := install.FirstConflist(filepath.Join(root, confDir))
	if err != nil || filepath.Base(first) != install.OwnedName {
		t.Fatalf("first conflist %s (%v)", first, err)
	}

	bed := testbed.New(t, testbed.Options{BinDir: filepath.Join(root, binDir)})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	netList, err := bed.ConfListFile(first)
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
	if b, err := os.ReadFile(logFile); err != nil || !strings.Contains(string(b), "default/app-0") {
		t.Errorf("the installed config's log file %s has no line for the gated pod (%v): %.300s", logFile, err, b)
	}
	if r := run(t, layout(t, "netready"), "--uninstall", "--root", root); r.code != 0 || exists(filepath.Join(root, owned)) {
		t.Fatalf("uninstall: %+v", r)
	}
}
