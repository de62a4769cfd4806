package k3s

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/netready/netready/e2e/testbed"
)

// These need neither root nor K3s.

func TestChainFromInfo(t *testing.T) {
	tests := []struct {
		name, info string
		want       []string
		wantErr    string
	}{
		{"netready last", `{"cniconfig":{"Networks":[{"Config":{"Name":"cni-loopback","Plugins":[{"Network":{"type":"loopback"}}]}},
			{"Config":{"Name":"cbr0","Plugins":[{"Network":{"type":"flannel"}},{"Network":{"type":"portmap"}},{"Network":{"type":"bandwidth"}},{"Network":{"type":"netready"}}]}}]}}`,
			[]string{"flannel", "portmap", "bandwidth", "netready"}, ""},
		{"default chain", `{"cniconfig":{"Networks":[{"Config":{"Name":"cni-loopback"}},{"Config":{"Name":"cbr0","Plugins":[{"Network":{"type":"flannel"}}]}}]}}`,
			[]string{"flannel"}, ""},
		{"not loaded", `{"cniconfig":{"Networks":[{"Config":{"Name":"cni-loopback"}}]}}`, nil, "no pod network loaded"},
		{"not JSON", `level=error`, nil, "crictl info"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := chainFromInfo([]byte(tt.info))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "cni"), 0o755)
	os.WriteFile(filepath.Join(dir, "cni", "bridge"), []byte("bridge"), 0o755)
	sum := sha256.Sum256([]byte("bridge"))
	good := hex.EncodeToString(sum[:]) + "  cni/bridge\n"
	tests := []struct {
		name, sums, wantErr string
	}{
		{"match", good, ""},
		{"mismatch", strings.Repeat("0", 64) + "  cni/bridge\n", "SHA256SUMS says"},
		{"missing file", good + hex.EncodeToString(sum[:]) + "  runc\n", "no such file"},
		{"malformed", "abc\n", "malformed line"},
		{"empty", "\n", "lists no file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := verify(dir, []byte(tt.sums))
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestFindDistSkipsWithoutK3s(t *testing.T) {
	t.Setenv(BinEnv, "")
	t.Setenv(DirEnv, t.TempDir())
	d, skip, err := FindDist(t.TempDir())
	if d != nil || err != nil || !strings.Contains(skip, "no K3s") || !strings.Contains(skip, DirEnv) {
		t.Fatalf("got %v, %q, %v; want a skip reason naming %s", d, skip, err, DirEnv)
	}
	t.Setenv(BinEnv, filepath.Join(t.TempDir(), "nope"))
	if _, _, err := FindDist(t.TempDir()); err == nil || !strings.Contains(err.Error(), BinEnv) {
		t.Fatalf("a K3S_BIN that does not exist: err %v, want one naming %s", err, BinEnv)
	}
}

func TestContainerdTemplate(t *testing.T) {
	got := containerdTemplate("/tmp/x/data")
	for _, want := range []string{
		`restrict_oom_score_adj = true`,
		`bin_dirs = ["/tmp/x/data/data/cni"]`,
		`conf_dir = "/tmp/x/data/agent/etc/cni/net.d"`,
		`root = "/tmp/x/data/agent/containerd"`,
		`sandbox = "{{ .NodeConfig.AgentConfig.PauseImage }}"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("template lacks %q", want)
		}
	}
	if strings.Contains(got, "/var/lib/rancher") {
		t.Errorf("template names the default data dir:\n%s", got)
	}
}

func TestManifest(t *testing.T) {
	var pod struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
		Spec struct {
			RestartPolicy  string `json:"restartPolicy"`
			InitContainers []struct {
				Args []string `json:"args"`
			} `json:"initContainers"`
			Containers []struct {
				Image, ImagePullPolicy string
				Args                   []string `json:"args"`
			} `json:"containers"`
		} `json:"spec"`
	}
	p := PodSpec{Namespace: "a", Name: "b", InitLoop: true, Sleep: true, Annotations: map[string]string{"netready.dev/timeout": "3s"}}
	if err := json.Unmarshal([]byte(p.Manifest()), &pod); err != nil {
		t.Fatal(err)
	}
	if pod.Spec.RestartPolicy != "Never" || len(pod.Spec.InitContainers) != 1 || pod.Spec.InitContainers[0].Args[0] != "-init" ||
		len(pod.Spec.Containers) != 1 || pod.Spec.Containers[0].Image != AppImage.Name || pod.Spec.Containers[0].ImagePullPolicy != "Never" ||
		!slices.Contains(pod.Spec.Containers[0].Args, "-sleep") || pod.Metadata.Annotations["netready.dev/timeout"] != "3s" {
		t.Fatalf("manifest %s", p.Manifest())
	}
}

// TestRenderManifest: the tier's edits of deploy/netready.yaml all apply, and a manifest that no
// longer has what they edit is refused.
func TestRenderManifest(t *testing.T) {
	root, err := testbed.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "netready.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	o := FleetOptions{ConfDir: "/d/agent/etc/cni/net.d", BinDir: "/d/data/cni", DataDir: "/d", Image: FleetImageRepo + ":e2e", Probes: []string{"tcp://198.51.100.10:5432"}, LogDir: "/r/log"}
	got, err := RenderManifest(string(raw), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"path: /d/agent/etc/cni/net.d\n", "path: /d/data/cni\n", "path: /r/log\n",
		`"logFile": "/r/log/netready.log",`, `"probes": ["tcp://198.51.100.10:5432"],`,
		`image: "docker.io/netready/netready:e2e"`, "imagePullPolicy: Never", "mountPath: /var/log/netready\n",
		"- --k3s-data-dir=/d\n", "mountPath: /d/agent/kubelet.kubeconfig\n", "path: /d/agent/kubelet.kubeconfig\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("rendered manifest lacks %q", want)
		}
	}
	for _, gone := range []string{"/var/lib/rancher", "IfNotPresent", `"/var/log/netready/netready.log"`} {
		if strings.Contains(got, gone) {
			t.Errorf("rendered manifest still has %q", gone)
		}
	}
	if _, err := RenderManifest(strings.Replace(string(raw), "imagePullPolicy: IfNotPresent", "imagePullPolicy: Always", 1), o); err == nil || !strings.Contains(err.Error(), "pull policy") {
		t.Errorf("a manifest without the pull policy to edit: err %v, want one naming the pull policy", err)
	}
}

// The agent gets its own dir for every fixed host path a K3s node writes, each distinct and in
// its own dir, and its kubelet its own cgroup root.
func TestAgentLayout(t *testing.T) {
	a := &Agent{Dir: "/tmp/nr-1-k3s-x/agent", DataDir: "/tmp/nr-1-k3s-x/agent/data", CgroupName: "nr-1-k3s-agent"}
	for _, p := range []string{kubeletDir, runK3s, runFlannel, "/run/containerd", varLibCNI, etcRancher, logPods, logCtrs, netnsDir} {
		if !slices.Contains(agentHostPaths, p) {
			t.Errorf("%s is not the agent's own: the server and the agent would share it", p)
		}
	}
	seen := map[string]string{}
	for _, p := range agentHostPaths {
		h := a.HostPath(p)
		if !strings.HasPrefix(h, a.Dir+"/host/") {
			t.Errorf("HostPath(%s) = %s, want it under %s/host", p, h, a.Dir)
		}
		if other, ok := seen[h]; ok {
			t.Errorf("HostPath(%s) = HostPath(%s) = %s", p, other, h)
		}
		seen[h] = p
	}
	if got, want := a.SubnetEnv(), a.HostPath(runFlannel)+"/subnet.env"; got != want {
		t.Errorf("SubnetEnv() = %s, want %s", got, want)
	}
	args := strings.Join(a.args("/tok"), " ")
	for _, want := range []string{"agent ", "--server https://" + testbed.NodeUplink.String() + ":6443", "--token-file /tok",
		"--node-ip " + testbed.Node2Uplink.String(), "--kubelet-arg cgroup-root=/nr-1-k3s-agent", "--data-dir " + a.DataDir} {
		if !strings.Contains(args, want) {
			t.Errorf("agent args %q lack %q", args, want)
		}
	}
}

func TestFlannelSubnet(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ name, content, want, wantErr string }{
		{"agent", "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.1.1/24\nFLANNEL_MTU=1450\n", "10.42.1.0/24", ""},
		{"none", "FLANNEL_NETWORK=10.42.0.0/16\n", "", "no FLANNEL_SUBNET"},
		{"bad", "FLANNEL_SUBNET=10.42.1.1\n", "", "netip.ParsePrefix"},
	} {
		p := filepath.Join(dir, c.name)
		if err := os.WriteFile(p, []byte(c.content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := flannelSubnet(p)
		switch {
		case c.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s: err %v, want one saying %q", c.name, err, c.wantErr)
			}
		case err != nil || got.String() != c.want:
			t.Errorf("%s: %v, %v; want %s", c.name, got, err, c.want)
		}
	}
}
