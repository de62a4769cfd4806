package install

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netready/netready/pkg/config"
)

// netreadyOf returns netready's parsed object in the owned conflist.
func netreadyOf(t *testing.T, n *fakeNode, path string) *config.Conf {
	t.Helper()
	p, err := config.FindPlugin([]byte(n.read(path)))
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse(p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFreshInstall(t *testing.T) {
	n := newFakeNode(t, k3sLive)
	steps := n.install(n.opts())
	want := []string{
		"create directory /var/log", "create directory /var/log/netready",
		"write install record " + state, "install binary " + binPath, "write conflist " + owned,
	}
	if got := ops(steps); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("steps:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n.read(binPath) != "netready build 1\n" {
		t.Error("binary not installed")
	}
	path, ok, why := FirstChainHasNetready(n.path(confDir))
	if !ok || filepath.Base(path) != OwnedName {
		t.Fatalf("first conflist %s has netready: %v (%s)", path, ok, why)
	}
	if n.read(confDir+"/"+PrimaryName) != k3sLive {
		t.Error("K3s's own conflist was touched")
	}
	var st State
	if err := json.Unmarshal([]byte(n.read(state)), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode != ModeOwned || strings.Join(st.Files, " ") != binPath+" "+owned || strings.Join(st.Dirs, " ") != "/var/log /var/log/netready" {
		t.Errorf("record %+v", st)
	}
}

func TestInstallFlags(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(o *Options)
		check func(t *testing.T, n *fakeNode, c *config.Conf)
	}{
		{name: "defaults", edit: func(o *Options) {}, check: func(t *testing.T, n *fakeNode, c *config.Conf) {
			if c.LogFile != DefaultLogFile || c.Base.Timeout != config.DefaultTimeout || c.Base.OnTimeout != config.Fail || len(c.Base.Probes) != 0 {
				t.Errorf("conf %+v", c)
			}
			if len(c.Skip.Namespaces) != 1 || c.Skip.Namespaces[0] != "kube-system" {
				t.Errorf("skip %+v", c.Skip)
			}
			if !c.Capabilities["io.kubernetes.cri.pod-annotations"] {
				t.Error("no annotation capability")
			}
		}},
		{name: "probes, timeout, onTimeout", edit: func(o *Options) {
			o.Settings.Probes = []string{"tcp://10.15.21.167:5432", "icmp://10.15.21.1"}
			o.Settings.Timeout = "45s"
			o.Settings.OnTimeout = "allow"
		}, check: func(t *testing.T, n *fakeNode, c *config.Conf) {
			if len(c.Base.Probes) != 2 || c.Base.Probes[0].String() != "tcp://10.15.21.167:5432" || c.Base.Timeout.String() != "45s" || c.Base.OnTimeout != config.Allow {
				t.Errorf("conf %+v", c.Base)
			}
		}},
		{name: "skip none", edit: func(o *Options) { o.Settings.SkipNamespaces = nil }, check: func(t *testing.T, n *fakeNode, c *config.Conf) {
			if len(c.Skip.Namespaces) != 0 {
				t.Errorf("skip %+v", c.Skip)
			}
		}},
		{name: "log to stderr", edit: func(o *Options) { o.Settings.LogFile = "" }, check: func(t *testing.T, n *fakeNode, c *config.Conf) {
			if c.LogFile != "" || n.exists("/var/log") {
				t.Errorf("logFile %q, /var/log created: %v", c.LogFile, n.exists("/var/log"))
			}
		}},
		{name: "bin-dir", edit: func(o *Options) {
			o.BinDir = "/opt/cni/bin"
		}, check: func(t *testing.T, n *fakeNode, c *config.Conf) {
			if !n.exists("/opt/cni/bin/netready") || n.exists(binPath) {
				t.Error("binary not in --bin-dir")
			}
		}},
		{name: "data-dir", edit: func(o *Options) { o.DataDir = "/srv/k3s" }, check: func(t *testing.T, n *fakeNode, c *config.Conf) {
			if !n.exists("/srv/k3s/agent/etc/cni/net.d/"+OwnedName) || !n.exists("/srv/k3s/data/cni/netready") || n.exists(owned) {
				t.Error("files not under --data-dir")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newFakeNode(t, k3sLive)
			o := n.opts()
			tt.edit(&o)
			if o.DataDir != "" { // that K3s's plugins and chain
				for _, p := range []string{"flannel", "portmap", "bandwidth"} {
					n.write(o.DataDir+"/data/cni/"+p, "#!/bin/sh\n", 0o755)
				}
				n.write(o.DataDir+"/agent/etc/cni/net.d/"+PrimaryName, k3sLive, 0o644)
			}
			n.install(o)
			conf := owned
			if o.DataDir != "" {
				conf = o.DataDir + "/agent/etc/cni/net.d/" + OwnedName
			}
			tt.check(t, n, netreadyOf(t, n, conf))
			if steps, _, err := n.plan(o); err != nil || len(steps) != 0 {
				t.Errorf("a second identical run plans %v (%v); want nothing", ops(steps), err)
			}
		})
	}
}

func TestSecondRunChangesNothing(t *testing.T) {
	n := newFakeNode(t, k3sLive)
	n.install(n.opts())
	before := n.snapshot()
	if steps := n.install(n.opts()); len(steps) != 0 {
		t.Fatalf("second run: %v", ops(steps))
	}
	if d := diffSnapshots(before, n.snapshot()); len(d) > 0 {
		t.Fatalf("second run changed %v", d)
	}
}

func TestChangedSettingsRewriteOnlyTheChain(t *testing.T) {
	n := newFakeNode(t, k3sLive)
	n.install(n.opts())
	o := n.opts()
	o.Settings.Probes = []string{"icmp://10.0.0.1"}
	steps := n.install(o)
	if got := ops(steps); len(got) != 1 || got[0] != "write conflist "+owned {
		t.Fatalf("steps %v; want the conflist alone", got)
	}
	if c := netreadyOf(t, n, owned); len(c.Base.Probes) != 1 {
		t.Fatalf("probes %v", c.Base.Probes)
	}
}

func TestNewBinaryReplacesOnlyTheBinary(t *testing.T) {
	n := newFakeNode(t, k3sLive)
	n.install(n.opts())
	os.WriteFile(n.bin, []byte("netready build 2\n"), 0o755)
	if got := ops(n.install(n.opts())); len(got) != 1 || got[0] != "install binary "+binPath {
		t.Fatalf("steps %v", got)
	}
	if n.read(binPath) != "netready build 2\n" {
		t.Fatal("not upgraded")
	}
}

func TestRegeneratesWhenK3sChainChanged(t *testing.T) {
	n := newFakeNode(t, k3sLive)
	n.install(n.opts())
	// A K3s upgrade: a new cniVersion and a plugin more.
	changed := `{"name":"cbr0","cniVersion":"1.1.0","plugins":[{"type":"flannel","delegate":{"hairpinMode":true}},{"type":"portmap","capabilities":{"portMappings":true}},{"type":"bandwidth","capabilities":{"bandwidth":true}},{"type":"firewall"}]}`
	n.write(confDir+"/"+PrimaryName, changed, 0o644)
	n.write(DefaultDataDir+"/data/cni/firewall", "#!/bin/sh\n", 0o755)
	steps := n.install(n.opts())
	if got := ops(steps); len(got) != 1 || got[0] != "write conflist "+owned {
		t.Fatalf("steps %v; want the owned conflist rewritten", got)
	}
	var top struct {
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	json.Unmarshal([]byte(n.read(owned)), &top)
	var types []string
	for _, p := range top.Plugins {
		types = append(types, p.Type)
	}
	if top.CNIVersion != "1.1.0" || strings.Join(types, ",") != "flannel,portmap,bandwidth,firewall,netready" {
		t.Fatalf("owned chain %s %v; want K3s's new chain with netready last", top.CNIVersion, types)
	}
}

func TestNoLiveChainUsesBuiltIn(t *testing.T) {
	n := newFakeNode(t, "")
	steps, notes, err := n.plan(n.opts())
	if err != nil {
		t.Fatal(err)
	}
	if len(notes) != 2 || !strings.Contains(notes[0], "podWatch is off: no /var/lib/rancher/k3s/agent/kubelet.kubeconfig") ||
		!strings.Contains(notes[1], "built-in chain") {
		t.Errorf("notes %q; want one saying podWatch is off (no kubelet kubeconfig yet) and one saying the built-in chain is used", notes)
	}
	if _, err := Apply(n.root, steps); err != nil {
		t.Fatal(err)
	}
	want, _ := BuildOwned(K3sChain, mustObject(t, n.opts().Settings))
	if n.read(owned) != string(want) {
		t.Fatal("owned conflist is not K3s's built-in chain with netready")
	}
	// K3s starts and writes its own chain: the next install follows it.
	live := strings.Replace(k3sLive, `"1.0.0"`, `"1.1.0"`, 1)
	n.write(confDir+"/"+PrimaryName, live, 0o644)
	if got := ops(n.install(n.opts())); len(got) != 1 {
		t.Fatalf("steps %v; want the chain regenerated", got)
	}
}

func mustObject(t *testing.T, s Settings) []byte {
	b, err := PluginObject(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRefusals(t *testing.T) {
	tests := []struct {
		name  string
		setup func(n *fakeNode, o *Options)
		want  string
	}{
		{name: "invalid probe", setup: func(n *fakeNode, o *Options) { o.Settings.Probes = []string{"tcp://db:5432"} }, want: "is not an IP address"},
		{name: "primary already holds netready", setup: func(n *fakeNode, o *Options) {
			n.write(confDir+"/"+PrimaryName, `{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel"},{"type":"netready"}]}`, 0o644)
		}, want: "already holds netready"},
		{name: "broken primary", setup: func(n *fakeNode, o *Options) { n.write(confDir+"/"+PrimaryName, `{"name":`, 0o644) }, want: "cannot build"},
		{name: "an owned conflist not made by install", setup: func(n *fakeNode, o *Options) {
			n.write(owned, `{"name":"x","cniVersion":"1.0.0","plugins":[{"type":"flannel"}]}`, 0o644)
		}, want: "not netready's to overwrite"},
		{name: "a foreign binary", setup: func(n *fakeNode, o *Options) { n.write(binPath, "someone else's", 0o755) }, want: "not netready's to overwrite"},
		{name: "another CNI and no flannel chain", setup: func(n *fakeNode, o *Options) {
			os.Remove(n.path(confDir + "/" + PrimaryName))
			n.write(confDir+"/10-calico.conflist", `{"name":"k8s-pod-network","cniVersion":"1.0.0","plugins":[{"type":"calico"}]}`, 0o644)
		}, want: "holds 10-calico.conflist but no 10-flannel.conflist"},
		{name: "flannel-backend none in config", setup: func(n *fakeNode, o *Options) {
			n.write(K3sConfigDropInDir+"/10-cni.yaml", "flannel-backend: \"none\"\n", 0o600)
		}, want: "/etc/rancher/k3s/config.yaml.d/10-cni.yaml sets flannel-backend: none"},
		{name: "another CNI's chain is the one containerd runs", setup: func(n *fakeNode, o *Options) {
			n.write(confDir+"/05-cilium.conflist", `{"name":"cilium","cniVersion":"1.0.0","plugins":[{"type":"cilium-cni"}]}`, 0o644)
		}, want: "containerd runs 05-cilium.conflist"},
		{name: "k3s runs with --flannel-backend=none", setup: func(n *fakeNode, o *Options) {
			fakeProc(n.t, n.root, 50, []string{"/usr/local/bin/k3s", "server", "--flannel-backend=none"}, nil, "")
		}, want: "k3s (pid 50) runs with --flannel-backend=none"},
		{name: "installed in the other mode", setup: func(n *fakeNode, o *Options) {
			n.write(state, `{"mode":"flannel-cni-conf","files":[]}`, 0o644)
		}, want: "uninstall first"},
		{name: "flannel-cni-conf set elsewhere", setup: func(n *fakeNode, o *Options) {
			o.Mode = ModeFlannelCNIConf
			n.write(DefaultK3sConfig, "token: x\nflannel-cni-conf: /etc/my.conflist\n", 0o600)
		}, want: "/etc/rancher/k3s/config.yaml:2: flannel-cni-conf: /etc/my.conflist"},
		{name: "flannel-cni-conf in the unit", setup: func(n *fakeNode, o *Options) {
			o.Mode = ModeFlannelCNIConf
			n.write("/etc/systemd/system/k3s.service", "ExecStart=/usr/local/bin/k3s server --flannel-cni-conf=/x\n", 0o644)
		}, want: "k3s.service:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newFakeNode(t, k3sLive)
			o := n.opts()
			tt.setup(n, &o)
			before := n.snapshot()
			_, _, err := n.plan(o)
			var r *Refusal
			if !errors.As(err, &r) || !strings.Contains(err.Error(), tt.want) || !strings.HasSuffix(err.Error(), "Nothing was changed.") {
				t.Fatalf("err = %v; want a refusal containing %q", err, tt.want)
			}
			if d := diffSnapshots(before, n.snapshot()); len(d) > 0 {
				t.Fatalf("a refused plan changed %v", d)
			}
		})
	}
}

func TestAdoptsAnIdenticalBinary(t *testing.T) {
	n := newFakeNode(t, k3sLive)
	n.write(binPath, "netready build 1\n", 0o755)
	steps := n.install(n.opts())
	for _, s := range steps {
		if s.Op == OpBinary {
			t.Fatal("rewrote an identical binary")
		}
	}
}

func TestUninstallRemovesExactlyWhatInstallMade(t *testing.T) {
	for _, mode := range []Mode{ModeOwned, ModeFlannelCNIConf} {
		t.Run(string(mode), func(t *testing.T) {
			n := newFakeNode(t, k3sLive)
			n.write(DefaultDataDir+"/data/cni/foreign", "x", 0o755)
			n.write(confDir+"/99-other.conflist", `{"name":"o","cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}`, 0o644)
			n.write(DefaultK3sConfig, "write-kubeconfig-mode: \"0644\"\n", 0o600)
			before := n.snapshot()
			o := n.opts()
			o.Mode = mode
			n.install(o)
			if d := diffSnapshots(before, n.snapshot()); len(d) == 0 {
				t.Fatal("install changed nothing")
			}
			_, kept := n.uninstall(o)
			if len(kept) > 0 {
				t.Fatalf("kept %v", kept)
			}
			if d := diffSnapshots(before, n.snapshot()); len(d) > 0 {
				t.Fatalf("after uninstall the node differs from before install: %v", d)
			}
			// A second uninstall has nothing to do.
			node, _ := ReadNode(o, "")
			if steps, _, err := PlanUninstall(node); err != nil || len(steps) != 0 {
				t.Fatalf("second uninstall: %v %v", ops(steps), err)
			}
		})
	}
}

func TestUninstallLeavesADirWithForeignFiles(t *testing.T) {
	n := newFakeNode(t, k3sLive)
	n.install(n.opts())
	n.write("/var/log/netready/netready.log", "{}\n", 0o640) // the plugin's log
	node, _ := ReadNode(n.opts(), "")
	steps, _, err := PlanUninstall(node)
	if err != nil {
		t.Fatal(err)
	}
	done, err := Apply(n.root, steps)
	if err != nil {
		t.Fatal(err)
	}
	if !n.exists("/var/log/netready/netready.log") || n.exists(owned) || n.exists(binPath) || n.exists(state) {
		t.Fatal("wrong files left")
	}
	if !strings.Contains(strings.Join(done, "\n"), "kept the directory /var/log/netready") {
		t.Errorf("output %q does not say the log dir was kept", done)
	}
}

func TestUninstallKeepsBinaryWhileK3sChainsNetready(t *testing.T) {
	n := newFakeNode(t, k3sLive)
	o := n.opts()
	o.Mode = ModeFlannelCNIConf
	n.install(o)
	// K3s honoured flannel-cni-conf: its live chain is netready's.
	n.write(confDir+"/"+PrimaryName, n.read(FlannelConflist), 0o644)
	if steps := n.install(o); len(steps) != 0 {
		t.Fatalf("install after K3s took the chain: %v; want nothing", ops(steps))
	}
	_, kept := n.uninstall(o)
	if len(kept) != 1 || !strings.Contains(kept[0], binPath) || !n.exists(binPath) {
		t.Fatalf("kept %v; want the binary kept while K3s chains netready", kept)
	}
	if n.exists(FlannelConflist) || n.exists(FlannelDropIn) {
		t.Fatal("the drop-in or conflist remains")
	}
	// K3s restarted without the option: the next uninstall removes the binary.
	n.write(confDir+"/"+PrimaryName, k3sLive, 0o644)
	if _, kept := n.uninstall(o); len(kept) != 0 || n.exists(binPath) || n.exists(state) {
		t.Fatalf("second uninstall kept %v", kept)
	}
}

func TestUninstallRefusesAnUnrecordedOwnedFile(t *testing.T) {
	n := newFakeNode(t, k3sLive)
	n.write(owned, "{}", 0o644)
	node, _ := ReadNode(n.opts(), "")
	if _, _, err := PlanUninstall(node); err == nil || !strings.Contains(err.Error(), "no install record") {
		t.Fatalf("err = %v", err)
	}
}

func TestKilledInstallIsUndoneExactly(t *testing.T) {
	// The record is written first: an install killed after it is undone by uninstall.
	n := newFakeNode(t, k3sLive)
	before := n.snapshot()
	steps, _, err := n.plan(n.opts())
	if err != nil {
		t.Fatal(err)
	}
	for i := range steps {
		if steps[i].Op == OpState {
			if _, err := Apply(n.root, steps[:i+1]); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	n.uninstall(n.opts())
	if d := diffSnapshots(before, n.snapshot()); len(d) > 0 {
		t.Fatalf("left %v", d)
	}
}

func TestAConfAfterK3sChainIsNoBar(t *testing.T) {
	n := newFakeNode(t, k3sLive)
	n.write(confDir+"/99-loopback.conf", `{"name":"lo","cniVersion":"1.0.0","type":"loopback"}`, 0o644)
	n.install(n.opts())
}

func TestFirstChainCheck(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		ok    bool
		why   string
	}{
		{name: "owned first", files: map[string]string{OwnedName: mustOwned(t, k3sLive), PrimaryName: k3sLive}, ok: true},
		{name: "shadowed by an earlier name", files: map[string]string{"00-calico.conflist": `{"name":"k8s-pod-network","cniVersion":"1.0.0","plugins":[{"type":"calico"}]}`, OwnedName: mustOwned(t, k3sLive)}, why: "calico"},
		{name: "shadowed by a .conf", files: map[string]string{"00-a.conf": `{"name":"a","cniVersion":"1.0.0","type":"bridge"}`, OwnedName: mustOwned(t, k3sLive)}, why: "bridge"},
		{name: "a dot-file sorts first", files: map[string]string{".00-x.json": `{"name":"x","cniVersion":"1.0.0","type":"flannel"}`, OwnedName: mustOwned(t, k3sLive)}, why: "flannel"},
		{name: "a conflist in a .json", files: map[string]string{"00-a.json": `{"name":"x","cniVersion":"1.0.0","plugins":[{"type":"netready"}]}`, OwnedName: mustOwned(t, k3sLive)}, why: "missing 'type'"},
		{name: "000- sorts after 00-n", files: map[string]string{"000-x.conflist": `{`, OwnedName: mustOwned(t, k3sLive)}, ok: true},
		{name: "broken first file", files: map[string]string{"00-a.conflist": `{`, OwnedName: mustOwned(t, k3sLive)}, why: "cannot load"},
		{name: "K3s's chain alone", files: map[string]string{PrimaryName: k3sLive}, why: "flannel, portmap, bandwidth"},
		{name: "empty", why: "no *.conf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := t.TempDir()
			for f, c := range tt.files {
				os.WriteFile(filepath.Join(d, f), []byte(c), 0o644)
			}
			_, ok, why := FirstChainHasNetready(d)
			if ok != tt.ok || !strings.Contains(why, tt.why) {
				t.Fatalf("ok %v why %q; want %v, %q", ok, why, tt.ok, tt.why)
			}
		})
	}
}

func TestUninstallFlannelModeRemovesTheDropInFirst(t *testing.T) {
	n := newFakeNode(t, k3sLive)
	o := n.opts()
	o.Mode = ModeFlannelCNIConf
	n.install(o)
	steps, _ := n.uninstall(o)
	got := strings.Join(ops(steps), "\n")
	if i, j := strings.Index(got, FlannelDropIn), strings.Index(got, FlannelConflist); i < 0 || j < 0 || i > j {
		t.Fatalf("steps:\n%s\nwant the drop-in removed before the conflist it names", got)
	}
}

func TestReconcileFollowsK3sChain(t *testing.T) {
	n := newFakeNode(t, k3sLive)
	o := n.opts()
	if done, _, err := Reconcile(o); err != nil || len(done) == 0 {
		t.Fatalf("first Reconcile: %v %v", done, err)
	}
	if done, _, err := Reconcile(o); err != nil || len(done) != 0 {
		t.Fatalf("Reconcile of an installed node did %v (%v); want nothing", done, err)
	}
	n.write(confDir+"/"+PrimaryName, strings.Replace(k3sLive, `"1.0.0"`, `"1.1.0"`, 1), 0o644)
	done, _, err := Reconcile(o)
	if err != nil || len(done) != 1 || done[0] != "wrote "+owned {
		t.Fatalf("Reconcile after K3s changed its chain: %v %v", done, err)
	}
	if l := n.read(owned); !strings.Contains(l, `"cniVersion": "1.1.0"`) {
		t.Fatalf("owned chain not regenerated:\n%s", l)
	}
}

func TestOwnedModeNotesTheOldDropIn(t *testing.T) {
	n := newFakeNode(t, k3sLive)
	n.write(FlannelDropIn, "flannel-cni-conf: "+FlannelConflist+"\n", 0o644)
	_, notes, err := n.plan(n.opts())
	if err != nil || len(notes) != 1 || !strings.Contains(notes[0], "delete it and "+FlannelConflist) {
		t.Fatalf("notes %q (%v); want one about the old drop-in", notes, err)
	}
}

func TestWithoutBinaryTheBinDirsIsUsed(t *testing.T) {
	n := newFakeNode(t, k3sLive)
	o := n.opts()
	o.Binary = ""
	if _, _, err := Reconcile(o); err == nil || !strings.Contains(err.Error(), "no executable for plugin type(s) netready") {
		t.Fatalf("err = %v; want the chain refused while netready is not in the bin dir", err)
	}
	if n.exists(owned) {
		t.Fatal("wrote a chain naming a plugin that is not there")
	}
	n.write(binPath, "netready from elsewhere\n", 0o755)
	if _, _, err := Reconcile(o); err != nil {
		t.Fatal(err)
	}
	if n.read(binPath) != "netready from elsewhere\n" || !n.exists(owned) {
		t.Fatal("the bin dir's netready was replaced, or the chain not written")
	}
}
