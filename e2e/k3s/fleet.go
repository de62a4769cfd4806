package k3s

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// FleetImageRepo is the repository packaging/image names the image with.
const FleetImageRepo = "docker.io/netready/netready"

// BuildImage builds netready's amd64 image tarball the way `make image` does (packaging/image's
// program, go-containerregistry) from the binary bin, tagged version, into dir, and returns its path.
func BuildImage(ctx context.Context, repoRoot, bin, version, dir string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "run", ".", "-version", version, "-epoch", "0", "-out", dir, "-bin", "amd64="+bin)
	cmd.Dir = filepath.Join(repoRoot, "packaging", "image")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("packaging/image: %w\n%s", err, out)
	}
	p := filepath.Join(dir, fmt.Sprintf("netready-image-%s-linux-amd64.tar", version))
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("packaging/image did not write %s: %w", p, err)
	}
	return p, nil
}

// ImportImage imports an image tarball into K3s's containerd (namespace k8s.io, where the
// kubelet's images live) with K3s's own ctr, as a user without a registry does.
func (n *Node) ImportImage(ctx context.Context, tar string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(n.binDir(), "ctr"), "--address", containerdS, "--namespace", "k8s.io", "images", "import", tar)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr images import %s: %w: %s", tar, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// FleetOptions are the tier's values for deploy/netready.yaml.
type FleetOptions struct {
	ConfDir, BinDir string // K3s's CNI dirs on the node
	DataDir         string // K3s's data dir: the agent fills podWatch from its agent/kubelet.kubeconfig
	Image           string // repository:tag, imported beforehand (imagePullPolicy Never)
	Probes          []string
	LogDir          string // the node's dir for netready's log (hostPath), instead of /var/log/netready
}

// RenderManifest turns deploy/netready.yaml (rendered from the chart with its defaults) into the
// tier's: the CNI hostPaths, the image and pull policy, the probes and the log dir, which is what
// the manifest's header tells a user to edit. Every edit must match exactly once, so that a change
// of the manifest fails here with what was not found rather than deploying something else.
func RenderManifest(manifest string, o FleetOptions) (string, error) {
	probes := "[]"
	if len(o.Probes) > 0 {
		probes = `["` + strings.Join(o.Probes, `", "`) + `"]`
	}
	logFile := filepath.Join(o.LogDir, "netready.log")
	edits := []struct{ what, re, repl string }{
		{"the CNI conf dir's hostPath", `(?m)^(\s+path: )/var/lib/rancher/k3s/agent/etc/cni/net\.d$`, "${1}" + o.ConfDir},
		{"the CNI bin dir's hostPath", `(?m)^(\s+path: )/var/lib/rancher/k3s/data/cni$`, "${1}" + o.BinDir},
		{"the log dir's hostPath", `(?m)^(\s+path: )/var/log/netready$`, "${1}" + o.LogDir},
		{"the plugin's logFile", `(?m)^(\s+"logFile": )"/var/log/netready/netready\.log",$`, "${1}\"" + logFile + "\","},
		{"the probes", `(?m)^(\s+"probes": )\[\],$`, "${1}" + probes + ","},
		{"the image", `(?m)^(\s+image: )"[^"]+"$`, "${1}\"" + o.Image + "\""},
		{"the pull policy", `(?m)^(\s+imagePullPolicy: )IfNotPresent$`, "${1}Never"},
		{"the agent's K3s data dir", `(?m)^(\s+- --k3s-data-dir=)/var/lib/rancher/k3s$`, "${1}" + o.DataDir},
		{"the kubelet kubeconfig's mount", `(?m)^(\s+mountPath: )/var/lib/rancher/k3s/agent/kubelet\.kubeconfig$`, "${1}" + filepath.Join(o.DataDir, "agent", "kubelet.kubeconfig")},
		{"the kubelet kubeconfig's hostPath", `(?m)^(\s+path: )/var/lib/rancher/k3s/agent/kubelet\.kubeconfig$`, "${1}" + filepath.Join(o.DataDir, "agent", "kubelet.kubeconfig")},
	}
	for _, e := range edits {
		re := regexp.MustCompile(e.re)
		if n := len(re.FindAllStringIndex(manifest, -1)); n != 1 {
			return "", fmt.Errorf("deploy/netready.yaml: %s (/%s/) matches %d times, want once: update RenderManifest to the manifest", e.what, e.re, n)
		}
		manifest = re.ReplaceAllString(manifest, e.repl)
	}
	return manifest, nil
}
