package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netready/netready/pkg/install"
)

var testK3sChain = string(install.K3sChain)

const (
	tConfDir = "/var/lib/rancher/k3s/agent/etc/cni/net.d"
	tBinDir  = "/var/lib/rancher/k3s/data/cni"
)

// k3sRoot lays out a K3s node under a temp dir and returns it with a fake
// netready binary to install.
func k3sRoot(t *testing.T) (root, binary string) {
	t.Helper()
	root = t.TempDir()
	for _, d := range []string{tConfDir, tBinDir} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"flannel", "portmap", "bandwidth"} {
		os.WriteFile(filepath.Join(root, tBinDir, p), []byte("#!/bin/sh\n"), 0o755)
	}
	os.WriteFile(filepath.Join(root, tConfDir, "10-flannel.conflist"), []byte(testK3sChain), 0o644)
	binary = filepath.Join(t.TempDir(), "netready")
	os.WriteFile(binary, []byte("netready\n"), 0o755)
	return root, binary
}

func cli(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = runCLI(args, &o, &e)
	return code, o.String(), e.String()
}

func TestCLIInstallUninstall(t *testing.T) {
	root, bin := k3sRoot(t)
	args := []string{"install", "--root", root, "--binary", bin, "--probe", "tcp://10.15.21.167:5432", "--probe", "icmp://10.15.21.1"}

	code, out, errOut := cli(append(args, "--dry-run")...)
	if code != 0 || !strings.Contains(out, "dry run: nothing was changed") || !strings.Contains(out, `"tcp://10.15.21.167:5432"`) {
		t.Fatalf("dry run: %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(root, tConfDir, "00-netready.conflist")); err == nil {
		t.Fatal("dry run wrote the conflist")
	}

	code, out, errOut = cli(args...)
	if code != 0 || !strings.Contains(out, "containerd reads "+tConfDir+"/00-netready.conflist first") || !strings.Contains(out, "no restart needed") {
		t.Fatalf("install: %d\n%s%s", code, out, errOut)
	}
	code, out, _ = cli(append(args, "--restart=false")...)
	if code != 0 || !strings.Contains(out, "nothing to change") {
		t.Fatalf("second install: %d\n%s", code, out)
	}

	code, out, errOut = cli("uninstall", "--root", root, "--dry-run")
	if code != 0 || !strings.Contains(out, "remove "+tConfDir+"/00-netready.conflist") {
		t.Fatalf("uninstall dry run: %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = cli("uninstall", "--root", root)
	if code != 0 || !strings.Contains(out, "netready is uninstalled") {
		t.Fatalf("uninstall: %d\n%s%s", code, out, errOut)
	}
	for _, p := range []string{tConfDir + "/00-netready.conflist", tBinDir + "/netready", "/var/log/netready"} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s is left", p)
		}
	}
	code, out, _ = cli("uninstall", "--root", root)
	if code != 0 || !strings.Contains(out, "nothing to remove") {
		t.Fatalf("second uninstall: %d\n%s", code, out)
	}
}

func TestCLIInstallExitCodes(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		setup   func(root string)
		code    int
		wantErr string
	}{
		{name: "unknown mode", args: []string{"--mode", "drop-in"}, code: 2, wantErr: "--mode wants owned or flannel-cni-conf"},
		{name: "bad on-timeout", args: []string{"--on-timeout", "retry"}, code: 2, wantErr: "--on-timeout wants fail or allow"},
		{name: "restart with root", args: []string{"--restart"}, code: 2, wantErr: "cannot be combined with --root"},
		{name: "relative bin-dir", args: []string{"--bin-dir", "bin"}, code: 2, wantErr: "absolute path"},
		{name: "relative log file", args: []string{"--log-file", "x.log"}, code: 2, wantErr: "--log-file wants an absolute path"},
		{name: "unknown flag", args: []string{"--probes", "x"}, code: 2, wantErr: "flag provided but not defined"},
		{name: "stray argument", args: []string{"now"}, code: 2, wantErr: `unexpected argument "now"`},
		{name: "a probe by name", args: []string{"--probe", "tcp://db:5432"}, code: 1, wantErr: "not an IP address"},
		{name: "primary holds netready", setup: func(root string) {
			os.WriteFile(filepath.Join(root, tConfDir, "10-flannel.conflist"), []byte(`{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel"},{"type":"netready"}]}`), 0o644)
		}, code: 1, wantErr: "already holds netready"},
		{name: "shadowed by another conflist", setup: func(root string) {
			os.WriteFile(filepath.Join(root, tConfDir, "00-calico.conflist"), []byte(`{"name":"k8s","cniVersion":"1.0.0","plugins":[{"type":"calico"}]}`), 0o644)
		}, code: 1, wantErr: "containerd runs 00-calico.conflist"},
		{name: "flannel-cni-conf mode before a restart", args: []string{"--mode", "flannel-cni-conf"}, code: 3, wantErr: "K3s copies /etc/rancher/k3s/netready/10-flannel-netready.conflist over its chain only when it starts; restart it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, bin := k3sRoot(t)
			if tt.setup != nil {
				tt.setup(root)
			}
			code, out, errOut := cli(append([]string{"install", "--root", root, "--binary", bin}, tt.args...)...)
			if code != tt.code || !strings.Contains(errOut, tt.wantErr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q\nstdout: %s", code, errOut, tt.code, tt.wantErr, out)
			}
		})
	}
}

// Where K3s honours flannel-cni-conf, its live chain is netready's: the
// install check passes, and uninstall keeps the binary until K3s restarts,
// saying once, plainly, what to run.
func TestCLIFlannelCNIConfHonoured(t *testing.T) {
	root, bin := k3sRoot(t)
	args := []string{"install", "--root", root, "--binary", bin, "--mode", "flannel-cni-conf"}
	if code, _, _ := cli(args...); code != 3 {
		t.Fatalf("exit %d; want 3 before K3s restarts", code)
	}
	chain, err := os.ReadFile(filepath.Join(root, "/etc/rancher/k3s/netready/10-flannel-netready.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	live := filepath.Join(root, tConfDir, "10-flannel.conflist")
	os.WriteFile(live, chain, 0o644) // what K3s does at start where it honours the option
	if code, out, errOut := cli(args...); code != 0 || !strings.Contains(out, "chains netready last") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut := cli("uninstall", "--root", root)
	if code != 0 || strings.Count(out, "To finish:") != 1 || !strings.Contains(out, "then run netready uninstall again") {
		t.Fatalf("uninstall: %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(root, tBinDir, "netready")); err != nil {
		t.Fatal("binary removed while K3s's chain names netready")
	}
	os.WriteFile(live, []byte(testK3sChain), 0o644) // K3s restarted without the option
	if code, out, _ := cli("uninstall", "--root", root); code != 0 || !strings.Contains(out, "removed "+tBinDir+"/netready") {
		t.Fatalf("second uninstall: %d\n%s", code, out)
	}
}

// TestCLIFlannelCNIConfRestart drives --restart through a fake OpenRC whose
// rc-service plays K3s at start: one that honours flannel-cni-conf (copies
// netready's conflist over its chain) and one that ignores it (K3s 1.34–1.37,
// k3s issue 14597), which install must name.
func TestCLIFlannelCNIConfRestart(t *testing.T) {
	for _, tt := range []struct {
		name    string
		k3s     string // what the fake K3s writes over its live chain at start
		code    int
		wantOut string
	}{
		{name: "honoured", k3s: `cp "$ROOT/etc/rancher/k3s/netready/10-flannel-netready.conflist" "$LIVE"`, code: 0, wantOut: "K3s runs netready's chain"},
		{name: "ignored", k3s: `printf '%s' "$CHAIN" >"$LIVE"`, code: 3, wantOut: "this K3s ignores flannel-cni-conf (k3s issue 14597, K3s 1.34-1.37); run netready uninstall, then netready install without --mode"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root, bin := k3sRoot(t)
			for _, p := range []string{"/run/openrc", "/etc/init.d"} {
				os.MkdirAll(filepath.Join(root, p), 0o755)
			}
			os.WriteFile(filepath.Join(root, "/etc/init.d/k3s"), nil, 0o755)
			fakeBin := t.TempDir()
			log := filepath.Join(fakeBin, "calls")
			script := "#!/bin/sh\necho \"$@\" >>" + log + "\nsleep 0.05\n" + tt.k3s + "\n"
			os.WriteFile(filepath.Join(fakeBin, "rc-service"), []byte(script), 0o755)
			t.Setenv("PATH", fakeBin+":"+os.Getenv("PATH"))
			t.Setenv("ROOT", root)
			t.Setenv("LIVE", filepath.Join(root, tConfDir, "10-flannel.conflist"))
			t.Setenv("CHAIN", testK3sChain)

			// As install would run it after writing the files (--restart cannot go with --root).
			if code, _, _ := cli("install", "--root", root, "--binary", bin, "--mode", "flannel-cni-conf"); code != 3 {
				t.Fatalf("install without restart: exit %d, want 3", code)
			}
			node, err := install.ReadNode(install.Options{Root: root, Mode: install.ModeFlannelCNIConf}, "")
			if err != nil {
				t.Fatal(err)
			}
			var o, e bytes.Buffer
			code := finishFlannelMode(&o, &e, nodeFlags{root: root, restart: true}, node, filepath.Join(root, node.Paths.ConfDir))
			if code != tt.code || !strings.Contains(o.String()+e.String(), tt.wantOut) {
				t.Fatalf("exit %d, output %q; want %d and %q", code, o.String()+e.String(), tt.code, tt.wantOut)
			}
			if calls, _ := os.ReadFile(log); string(calls) != "k3s restart\n" {
				t.Errorf("rc-service called with %q; want one k3s restart", calls)
			}
		})
	}
}

func TestCLISkipNamespaceAndLogFile(t *testing.T) {
	for _, tt := range []struct {
		args     []string
		wantSkip string
		wantLog  string
	}{
		{args: nil, wantSkip: `{"namespaces":["kube-system"]}`, wantLog: `"/var/log/netready/netready.log"`},
		{args: []string{"--skip-namespace", "kube-system", "--skip-namespace", "monitoring"}, wantSkip: `{"namespaces":["kube-system","monitoring"]}`, wantLog: `"/var/log/netready/netready.log"`},
		{args: []string{"--skip-namespace", "", "--log-file", ""}},
		{args: []string{"--log-file", "/var/log/nr.log"}, wantSkip: `{"namespaces":["kube-system"]}`, wantLog: `"/var/log/nr.log"`},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			root, bin := k3sRoot(t)
			if code, out, errOut := cli(append([]string{"install", "--root", root, "--binary", bin}, tt.args...)...); code != 0 {
				t.Fatalf("exit %d\n%s%s", code, out, errOut)
			}
			raw, err := os.ReadFile(filepath.Join(root, tConfDir, "00-netready.conflist"))
			if err != nil {
				t.Fatal(err)
			}
			var list struct {
				Plugins []map[string]json.RawMessage `json:"plugins"`
			}
			if err := json.Unmarshal(raw, &list); err != nil {
				t.Fatal(err)
			}
			nr := list.Plugins[len(list.Plugins)-1]
			if got := compact(nr["skip"]); got != tt.wantSkip {
				t.Errorf("skip %s; want %s", got, tt.wantSkip)
			}
			if got := compact(nr["logFile"]); got != tt.wantLog {
				t.Errorf("logFile %s; want %s", got, tt.wantLog)
			}
		})
	}
}

func compact(raw json.RawMessage) string {
	if raw == nil {
		return ""
	}
	var b bytes.Buffer
	json.Compact(&b, raw)
	return b.String()
}

// The last word of install: a conflist that appeared before netready's in
// the meantime (install refuses one that was there before) fails it loudly.
func TestCLICheckFirstShadowed(t *testing.T) {
	root, bin := k3sRoot(t)
	if code, _, _ := cli("install", "--root", root, "--binary", bin); code != 0 {
		t.Fatal("install failed")
	}
	os.WriteFile(filepath.Join(root, tConfDir, "00-aaa.conflist"), []byte(`{"name":"x","cniVersion":"1.0.0","plugins":[{"type":"calico"}]}`), 0o644)
	node, err := install.ReadNode(install.Options{Root: root}, "")
	if err != nil {
		t.Fatal(err)
	}
	var o, e bytes.Buffer
	code := checkFirst(&o, &e, filepath.Join(root, tConfDir), node, "", "remove what shadows it")
	if code != exitNotInForce || !strings.Contains(e.String(), "NOT IN FORCE: the first conflist containerd reads in "+tConfDir+" ("+tConfDir+"/00-aaa.conflist) does not chain netready: its chain is x (cniVersion 1.0.0): calico") {
		t.Fatalf("exit %d, stderr %q", code, e.String())
	}
}
