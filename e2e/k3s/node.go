package k3s

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/netready/netready/e2e/ociimage"
	"github.com/netready/netready/e2e/testbed"
)

// Fixed host paths a K3s node uses whatever its data dir (see shared/k3s/README.md).
const (
	kubeletDir  = "/var/lib/kubelet"
	runK3s      = "/run/k3s"
	runFlannel  = "/run/flannel"
	subnetEnv   = "/run/flannel/subnet.env"
	etcRancher  = "/etc/rancher"
	logPods     = "/var/log/pods"
	logCtrs     = "/var/log/containers"
	varLibCNI   = "/var/lib/cni"
	containerdS = "/run/k3s/containerd/containerd.sock"
)

// Images the tier builds and imports through agent/images.
var (
	PauseImage = ociimage.Image{Name: "docker.io/netready-e2e/pause:1", Files: map[string]string{"/pause": "pause"}, Entrypoint: []string{"/pause"}}
	AppImage   = ociimage.Image{Name: "docker.io/netready-e2e/app:1", Files: map[string]string{"/app": "app"}, Entrypoint: []string{"/app"}}
)

// NodeName is the K3s node's name (not the host name, so that runs are alike on every machine).
const NodeName = "nr-k3s-node"

// Node is one K3s server (control plane and agent) running in a testbed node netns, behind the
// bed's router, with the bed's db outside the cluster.
type Node struct {
	Bed        *testbed.Bed
	Dist       *Dist
	Dir        string // the run's temp dir: data dir, kubeconfig, logs
	DataDir    string // K3s's --data-dir
	Kubeconfig string
	Log        string // K3s's stdout and stderr (containerd logs to agent/containerd/containerd.log)
	Tools      string // dir of the images' programs

	API *API // the API server, through the node netns

	cmd     *exec.Cmd
	exited  chan struct{}
	started time.Time
	state   *hostState
	lock    *os.File
	closed  bool
	agent   *Agent // StartAgent's, until its Close
}

// CNIBinDir is where containerd finds the CNI plugins (K3s sets it from where host-local is in PATH).
func (n *Node) CNIBinDir() string { return filepath.Join(n.DataDir, "data", "cni") }

// CNIConfDir is containerd's CNI conf dir.
func (n *Node) CNIConfDir() string { return filepath.Join(n.DataDir, "agent", "etc", "cni", "net.d") }

// ContainerdLog is the embedded containerd's log.
func (n *Node) ContainerdLog() string {
	return filepath.Join(n.DataDir, "agent", "containerd", "containerd.log")
}

// binDir is the data dir's bin dir, data/current/bin, as the stock wrapper lays it out.
func (n *Node) binDir() string { return filepath.Join(n.DataDir, "data", "current", "bin") }

// layout lays out the data dir as the stock k3s wrapper would (shared/k3s/README.md): the
// multi-call binary and its role links, shim, runc, the CNI plugins, the images and the
// containerd template that adds restrict_oom_score_adj (no CAP_SYS_RESOURCE on this machine).
func (n *Node) layout() error { return layoutDataDir(n.Dist, n.DataDir, n.Tools) }

// layoutDataDir lays out a data dir (a server's or an agent's) as layout says.
func layoutDataDir(dist *Dist, dataDir, tools string) error {
	if !dist.Stock {
		hash := filepath.Join(dataDir, "data", "f08deaf8-local")
		bin := filepath.Join(hash, "bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			return err
		}
		for src, dst := range map[string]string{dist.K3s: "k3s", dist.Shim: "containerd-shim-runc-v2", dist.Runc: "runc"} {
			if err := linkOrCopy(src, filepath.Join(bin, dst)); err != nil {
				return err
			}
		}
		for _, role := range []string{"k3s-server", "k3s-agent", "containerd", "ctr", "crictl", "kubectl"} {
			if err := os.Symlink("k3s", filepath.Join(bin, role)); err != nil {
				return err
			}
		}
		if err := os.Symlink(hash, filepath.Join(dataDir, "data", "current")); err != nil {
			return err
		}
		cni := filepath.Join(dataDir, "data", "cni")
		if err := os.MkdirAll(cni, 0o755); err != nil {
			return err
		}
		entries, err := os.ReadDir(dist.CNI)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := linkOrCopy(filepath.Join(dist.CNI, e.Name()), filepath.Join(cni, e.Name())); err != nil {
				return err
			}
		}
	}
	images := filepath.Join(dataDir, "agent", "images")
	if err := os.MkdirAll(images, 0o755); err != nil {
		return err
	}
	for _, img := range []ociimage.Image{PauseImage, AppImage} {
		name := strings.NewReplacer("/", "_", ":", "_").Replace(img.Name) + ".tar"
		if err := ociimage.WriteFile(filepath.Join(images, name), img, tools); err != nil {
			return err
		}
	}
	tmpl := filepath.Join(dataDir, "agent", "etc", "containerd", "config-v3.toml.tmpl")
	if err := os.MkdirAll(filepath.Dir(tmpl), 0o755); err != nil {
		return err
	}
	return os.WriteFile(tmpl, []byte(containerdTemplate(dataDir)), 0o644)
}

// containerdTemplate is the config.toml K3s generates for this node plus restrict_oom_score_adj,
// with the data dir's paths filled in; K3s renders it with text/template (the pause image).
func containerdTemplate(dataDir string) string {
	return strings.ReplaceAll(`# netready e2e/k3s: K3s's generated config plus restrict_oom_score_adj.
version = 3
root = "@D@/agent/containerd"
state = "/run/k3s/containerd"

[grpc]
  address = "/run/k3s/containerd/containerd.sock"

[plugins.'io.containerd.internal.v1.opt']
  path = "@D@/agent/containerd"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "10010"

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  device_ownership_from_security_context = false
  restrict_oom_score_adj = true

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  disable_snapshot_annotations = true
  use_local_image_pull = true

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{{ .NodeConfig.AgentConfig.PauseImage }}"

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["@D@/data/cni"]
  conf_dir = "@D@/agent/etc/cni/net.d"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = false

[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = "@D@/agent/etc/containerd/certs.d"
`, "@D@", dataDir)
}

func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o755)
}

// serverArgs are K3s's flags for this node (the README's config.yaml, as flags: no file in
// /etc/rancher/k3s is needed).
func (n *Node) serverArgs() []string {
	return []string{"server",
		"--data-dir", n.DataDir,
		"--node-name", NodeName,
		"--node-ip", testbed.NodeUplink.String(),
		"--flannel-iface", "uplink",
		"--flannel-backend", "vxlan",
		"--write-kubeconfig", n.Kubeconfig,
		"--write-kubeconfig-mode", "0644",
		"--disable", "traefik,servicelb,metrics-server,local-storage,coredns",
		"--pause-image", PauseImage.Name,
		"--kubelet-arg", "fail-cgroupv1=false",
	}
}

// start runs `nsenter --net=<node netns> k3s server ...`. nsenter without --fork execs k3s, so
// the PID is k3s's. PATH has the CNI dir and the bin dir first, as the wrapper sets it.
func (n *Node) start() error {
	k3s := filepath.Join(n.binDir(), "k3s")
	if n.Dist.Stock {
		k3s = n.Dist.K3s
	}
	cmd := exec.Command("nsenter", append([]string{"--net=" + n.Bed.Node.Path, k3s}, n.serverArgs()...)...)
	var err error
	n.started, n.exited, err = n.startK3s(cmd, "k3s", n.Log, n.Dir, n.CNIBinDir()+":"+n.binDir())
	if !n.started.IsZero() { // started, if not recorded
		n.cmd = cmd
	}
	return err
}

// startK3s starts cmd, a k3s called who, with its output appended to log, path before the
// host's PATH and netready's coordination files under dir (containerd passes its environment
// on to CNI plugins: they go into the run's dir, not the host's /run/netready), and records its
// PID in the state file. It returns when it started and a channel closed once it has exited.
func (n *Node) startK3s(cmd *exec.Cmd, who, log, dir, path string) (time.Time, chan struct{}, error) {
	logf, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return time.Time{}, nil, err
	}
	defer logf.Close()
	runDir := filepath.Join(dir, "netready-run")
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return time.Time{}, nil, err
	}
	cmd.Env = append(os.Environ(), "PATH="+path+":"+os.Getenv("PATH"), "NETREADY_RUN_DIR="+runDir)
	cmd.Stdout, cmd.Stderr = logf, logf
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return time.Time{}, nil, fmt.Errorf("starting %s: %w", who, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	n.state.K3sPIDs = append(n.state.K3sPIDs, cmd.Process.Pid)
	return started, exited, n.state.save()
}

// waitReady waits until flannel wrote a fresh subnet.env, the node is Ready and the default
// service account exists (a pod cannot be created before it).
func (n *Node) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	steps := []startStep{
		{"flannel's " + subnetEnv, func() error {
			fi, err := os.Stat(subnetEnv)
			if err == nil && fi.ModTime().Before(n.started) {
				err = fmt.Errorf("%s is older than this start", subnetEnv)
			}
			return err
		}},
		{"the kubeconfig", func() error {
			if n.API != nil {
				return nil
			}
			api, err := newAPI(n.Kubeconfig, n.Bed.Node.Dial)
			if err == nil {
				n.API = api
			}
			return err
		}},
		{"node Ready", func() error {
			var node struct {
				Status struct {
					Conditions []struct{ Type, Status string } `json:"conditions"`
				} `json:"status"`
			}
			if err := n.API.Do(ctx, "GET", "/api/v1/nodes/"+NodeName, nil, &node); err != nil {
				return err
			}
			for _, c := range node.Status.Conditions {
				if c.Type == "Ready" && c.Status == "True" {
					return nil
				}
			}
			return fmt.Errorf("conditions %+v", node.Status.Conditions)
		}},
		{"service account default/default", func() error {
			return n.API.Do(ctx, "GET", "/api/v1/namespaces/default/serviceaccounts/default", nil, nil)
		}},
		// K3s starts kube-router's network policy controller after flannel; it lists the node's
		// links as it starts and K3s shuts down when that dump is interrupted by links changing
		// ("failed to start networking: unable to initialize network policy controller: error
		// getting node subnet: failed to get list of links: results may be incomplete", seen
		// here when 4 pods were created the moment the node was Ready). Its FORWARD jump
		// appears once it has started.
		kubeRouterStarted(ctx, "kube-router's network policy controller (KUBE-ROUTER-FORWARD in the node's FORWARD)", n.Bed.Node),
	}
	return waitSteps(ctx, "k3s", steps, n.exited, n.started, n.Log)
}

// startStep is one thing a starting K3s has done once ok returns nil.
type startStep struct {
	what string
	ok   func() error
}

// waitSteps waits for each step in turn, polling every 200 ms, until ctx ends or exited (the
// k3s named who) is closed; the error names the step and ends with the tail of k3s's log.
func waitSteps(ctx context.Context, who string, steps []startStep, exited <-chan struct{}, started time.Time, log string) error {
	for _, s := range steps {
		for {
			last := s.ok()
			if last == nil {
				break
			}
			select {
			case <-exited:
				return fmt.Errorf("%s exited while waiting for %s; its log: %s\n%s", who, s.what, log, tail(log, 30))
			case <-ctx.Done():
				return fmt.Errorf("waiting for %s: not there %v after %s started (last: %v); its log: %s\n%s", s.what, time.Since(started).Round(time.Second), who, last, log, tail(log, 30))
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

// kubeRouterStarted is the step of kube-router's network policy controller having started: its
// jump in FORWARD of the node netns ns.
func kubeRouterStarted(ctx context.Context, what string, ns *testbed.Netns) startStep {
	return startStep{what, func() error {
		out, err := ns.Exec(ctx, "iptables", "-S", "FORWARD")
		if err == nil && !strings.Contains(string(out), "KUBE-ROUTER-FORWARD") {
			err = errors.New("not yet")
		}
		return err
	}}
}

// stop ends k3s (SIGTERM, SIGKILL after grace) and waits for it.
func (n *Node) stop(grace time.Duration) error {
	if n.cmd == nil {
		return nil
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(grace):
		n.cmd.Process.Kill()
		<-n.exited
	}
	n.cmd = nil
	return nil
}

// Restart stops K3s and starts it again on the same data dir, then waits for it as Start does.
func (n *Node) Restart(ctx context.Context) error {
	if err := n.stop(30 * time.Second); err != nil {
		return err
	}
	if err := n.start(); err != nil {
		return err
	}
	return n.waitReady(ctx, 3*time.Minute)
}

// Kubectl runs `k3s kubectl` in the node netns (the API server listens there) and returns stdout.
func (n *Node) Kubectl(ctx context.Context, args ...string) (string, error) {
	return n.KubectlInput(ctx, "", args...)
}

// KubectlInput is Kubectl with stdin (kubectl apply -f -).
func (n *Node) KubectlInput(ctx context.Context, stdin string, args ...string) (string, error) {
	// The multi-call binary picks its role from argv[0] (`k3s kubectl` answers "unknown command").
	full := append([]string{"--net=" + n.Bed.Node.Path, filepath.Join(n.binDir(), "kubectl"), "--kubeconfig", n.Kubeconfig}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Crictl runs `k3s crictl` against K3s's containerd.
func (n *Node) Crictl(ctx context.Context, args ...string) (string, error) {
	return crictl(ctx, filepath.Join(n.binDir(), "crictl"), containerdS, args...)
}

func crictl(ctx context.Context, bin, socket string, args ...string) (string, error) {
	full := append([]string{"--runtime-endpoint", "unix://" + socket}, args...)
	cmd := exec.CommandContext(ctx, bin, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("crictl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
