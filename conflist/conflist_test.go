// Package conflist_test checks the conflists shipped in conflist/: each loads with libcni as
// containerd loads it, keeps K3s's flannel chain verbatim with netready last, and its netready
// entry passes netready's own parser. As root, each also runs in a simulated K3s node.
package conflist_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/install"
)

func TestMain(m *testing.M) { os.Exit(testbed.Main(m)) }

// k3sChain is the list K3s writes (K3S.md), whose plugins must come first, unchanged.
var k3sChain = install.K3sChain

const podAnnotations = "io.kubernetes.cri.pod-annotations"

// The files this directory must hold; any other *.conflist is checked too.
var shipped = []string{
	"10-flannel-netready.conflist",
	"10-flannel-netready-dualstack.conflist",
	"example-rules.conflist",
}

func files(t *testing.T) []string {
	t.Helper()
	got, err := filepath.Glob("*.conflist")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range shipped {
		if !slices.Contains(got, want) {
			t.Errorf("conflist/%s is missing", want)
		}
	}
	return got
}

func decode(t *testing.T, raw []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	return v
}

// load reads a conflist as containerd does and returns netready's parsed entry and its raw object.
func load(t *testing.T, name string) (*libcni.NetworkConfigList, *config.Conf, map[string]any) {
	t.Helper()
	list, err := libcni.ConfListFromFile(name)
	if err != nil {
		t.Fatalf("libcni.ConfListFromFile: %v", err)
	}
	obj, err := config.FindPlugin(list.Bytes)
	if err != nil {
		t.Fatalf("config.FindPlugin: %v", err)
	}
	conf, err := config.Parse(obj)
	if err != nil {
		t.Fatalf("config.Parse of the netready entry: %v", err)
	}
	return list, conf, decode(t, list.Plugins[len(list.Plugins)-1].Bytes).(map[string]any)
}

func TestConflistsKeepK3sChainWithNetreadyLast(t *testing.T) {
	want := decode(t, k3sChain).(map[string]any)
	wantPlugins := want["plugins"].([]any)
	for _, name := range files(t) {
		t.Run(name, func(t *testing.T) {
			list, conf, entry := load(t, name)
			if list.Name != want["name"] || list.CNIVersion != want["cniVersion"] {
				t.Errorf("name %q cniVersion %q, want K3s's %q %q", list.Name, list.CNIVersion, want["name"], want["cniVersion"])
			}
			if len(list.Plugins) != len(wantPlugins)+1 {
				t.Fatalf("%d plugins, want K3s's %d and netready", len(list.Plugins), len(wantPlugins))
			}
			for i, p := range wantPlugins {
				if got := decode(t, list.Plugins[i].Bytes); !reflect.DeepEqual(got, p) {
					t.Errorf("plugins[%d] = %v, want K3s's %v", i, got, p)
				}
			}
			last := list.Plugins[len(list.Plugins)-1].Network
			if last.Type != "netready" {
				t.Errorf("last plugin has type %q, want netready", last.Type)
			}
			if !last.Capabilities[podAnnotations] || !conf.Capabilities[podAnnotations] {
				t.Errorf("netready does not declare the %q capability: containerd would not pass annotations", podAnnotations)
			}
			// The defaults that matter most are spelt out, so that an operator sees them;
			// a failed ADD's stderr is lost on K3s, so an installed config logs to a file.
			for _, k := range []string{"timeout", "onTimeout", "probes", "skip", "logFile"} {
				if _, ok := entry[k]; !ok {
					t.Errorf("netready entry does not spell out %q", k)
				}
			}
			if conf.LogFile != install.DefaultLogFile {
				t.Errorf("logFile %q, want netready install's default %q", conf.LogFile, install.DefaultLogFile)
			}
			for _, ns := range []string{"kube-system"} {
				spec, err := conf.Resolve(config.Pod{Namespace: ns, Name: "coredns-1"})
				if err != nil || !spec.Skipped {
					t.Errorf("a %s pod is not skipped (spec %+v, err %v): gating CoreDNS on probes can deadlock", ns, spec, err)
				}
			}
		})
	}
}

func TestConflistContents(t *testing.T) {
	type pod struct {
		ns, name  string
		skipped   bool
		rule      string
		probes    []string
		timeout   time.Duration
		onTimeout config.OnTimeout
	}
	tests := []struct {
		file         string
		gateway      bool
		defaultRoute bool
		explicit     []string // keys the file must spell out
		pods         []pod
	}{
		{
			file: "10-flannel-netready.conflist", gateway: true, defaultRoute: true,
			pods: []pod{
				{ns: "default", name: "web", timeout: 60 * time.Second, onTimeout: config.Fail},
				{ns: "kube-system", name: "coredns-1", skipped: true},
			},
		},
		{
			file: "10-flannel-netready-dualstack.conflist", gateway: true, defaultRoute: true,
			explicit: []string{"gateway", "defaultRoute"},
			pods: []pod{
				{ns: "default", name: "web", timeout: 60 * time.Second, onTimeout: config.Fail},
				{ns: "kube-system", name: "coredns-1", skipped: true},
			},
		},
		{
			file: "example-rules.conflist", gateway: true, defaultRoute: true,
			explicit: []string{"rules", "annotations"},
			pods: []pod{
				{ns: "default", name: "web", probes: []string{"icmp://192.0.2.1"}, timeout: 60 * time.Second, onTimeout: config.Fail},
				{ns: "analytics", name: "etl-0", rule: "rules[0]", probes: []string{"tcp://198.51.100.10:5432", "http://198.51.100.10/healthz"}, timeout: 120 * time.Second, onTimeout: config.Fail},
				{ns: "batch", name: "job-x", rule: "rules[1]", timeout: 60 * time.Second, onTimeout: config.Allow},
				{ns: "monitoring", name: "prometheus-0", rule: "rules[2]", probes: []string{"dns://198.51.100.10/example.com"}, timeout: 60 * time.Second, onTimeout: config.Fail},
				{ns: "monitoring", name: "node-exporter-abcde", skipped: true},
				{ns: "kube-system", name: "coredns-1", skipped: true},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			_, conf, entry := load(t, tt.file)
			for _, k := range tt.explicit {
				if _, ok := entry[k]; !ok {
					t.Errorf("netready entry does not spell out %q", k)
				}
			}
			if conf.Base.Gateway != tt.gateway || conf.Base.DefaultRoute != tt.defaultRoute {
				t.Errorf("gateway %v defaultRoute %v, want %v %v", conf.Base.Gateway, conf.Base.DefaultRoute, tt.gateway, tt.defaultRoute)
			}
			for _, p := range tt.pods {
				spec, err := conf.Resolve(config.Pod{Namespace: p.ns, Name: p.name})
				if err != nil {
					t.Errorf("%s/%s: %v", p.ns, p.name, err)
					continue
				}
				if spec.Skipped != p.skipped {
					t.Errorf("%s/%s: skipped %v (%s), want %v", p.ns, p.name, spec.Skipped, spec.SkipReason, p.skipped)
				}
				if p.skipped {
					continue
				}
				var probes []string
				for _, pr := range spec.Probes {
					probes = append(probes, pr.URL)
				}
				if spec.Rule != p.rule || !slices.Equal(probes, p.probes) || spec.Timeout != p.timeout || spec.OnTimeout != p.onTimeout {
					t.Errorf("%s/%s: rule %q probes %q timeout %s onTimeout %s, want %q %q %s %s",
						p.ns, p.name, spec.Rule, probes, spec.Timeout, spec.OnTimeout, p.rule, p.probes, p.timeout, p.onTimeout)
				}
			}
		})
	}
}

// TestShippedIsWhatInstallWrites: netready install with no flags, on a node
// whose live chain is K3s's, writes the chain of 10-flannel-netready.conflist.
func TestShippedIsWhatInstallWrites(t *testing.T) {
	obj, err := install.PluginObject(install.Settings{SkipNamespaces: []string{"kube-system"}, LogFile: install.DefaultLogFile})
	if err != nil {
		t.Fatal(err)
	}
	built, err := install.BuildOwned(k3sChain, obj)
	if err != nil {
		t.Fatal(err)
	}
	shipped, err := os.ReadFile("10-flannel-netready.conflist")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := decode(t, shipped), decode(t, built); !reflect.DeepEqual(got, want) {
		t.Errorf("conflist/10-flannel-netready.conflist differs from what netready install writes:\n%s", built)
	}
}

// localLog returns a copy of a shipped conflist whose logFile is in a temp
// dir: a test must not write the machine's /var/log.
func localLog(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	b = bytes.ReplaceAll(b, []byte(`"`+install.DefaultLogFile+`"`), []byte(`"`+filepath.Join(dir, "netready.log")+`"`))
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConflistsOnSimulatedNode runs each shipped list through libcni in a simulated K3s node
// (flannel test double, real bridge, host-local, portmap, bandwidth, netready). The example's
// addresses are the testbed's (documentation ranges), so its probes answer there.
func TestConflistsOnSimulatedNode(t *testing.T) {
	testbed.SkipUnlessRoot(t)
	tests := []struct {
		file      string
		dualStack bool
		ns        string
	}{
		{file: "10-flannel-netready.conflist", ns: "default"},
		{file: "10-flannel-netready-dualstack.conflist", dualStack: true, ns: "default"},
		{file: "example-rules.conflist", ns: "default"},   // icmp://192.0.2.1, the node's router
		{file: "example-rules.conflist", ns: "analytics"}, // tcp and http on the db
		{file: "example-rules.conflist", ns: "monitoring"},
	}
	for _, tt := range tests {
		t.Run(tt.file+"/"+tt.ns, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			bed := testbed.New(t, testbed.Options{Plugins: testbed.WithNetready, DualStack: tt.dualStack})
			list, err := bed.ConfListFile(localLog(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			pod, err := bed.NewPod(ctx)
			if err != nil {
				t.Fatal(err)
			}
			pod.Namespace, pod.Name = tt.ns, "prometheus-0"
			res, err := bed.Add(ctx, list, pod)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			families := map[bool]bool{}
			for _, ip := range res.IPs {
				families[ip.Address.IP.To4() != nil] = true
			}
			if !families[true] || families[false] != tt.dualStack {
				t.Errorf("pod addresses %v: want IPv4%s", res.IPs, map[bool]string{true: " and IPv6"}[tt.dualStack])
			}
			if err := bed.Check(ctx, list, pod); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			if err := bed.Del(ctx, list, pod); err != nil {
				t.Errorf("DEL: %v", err)
			}
		})
	}
}
