package k3s

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// AgentName is the K3s agent node's name.
const AgentName = "nr-k3s-agent"

// agentHostPaths are the fixed host paths a K3s node uses whatever its data dir
// (shared/k3s/README.md): in the agent's own mount namespace each is a bind mount of a dir of its
// own under the agent's dir, so that the server (in the host's mount namespace) and the agent
// do not share flannel's subnet.env, containerd's state and socket, the kubelet's root dir,
// host-local's leases, the node password, the pods' logs, or the pods' netns pins.
var agentHostPaths = []string{kubeletDir, runK3s, runFlannel, "/run/containerd", varLibCNI, etcRancher, logPods, logCtrs, netnsDir}

// Agent is a K3s agent (`k3s agent --server https://<server>:6443`) joined to the tier's server
// Node, in the bed's second node netns and a mount namespace of its own, its kubelet under a
// cgroup root of its own. Start it with Node.StartAgent; Node.Close stops it too.
type Agent struct {
	Server  *Node
	Netns   *testbed.Netns // the bed's node2
	Dir     string         // under the server's run dir: data dir, log, the host paths' dirs
	DataDir string
	Log     string
	// CgroupName is the top-level cgroup (in every hierarchy) given to the kubelet as
	// --cgroup-root: its pods are under /<CgroupName>/kubepods, not the server's /kubepods.
	CgroupName string

	cmd     *exec.Cmd
	exited  chan struct{}
	started time.Time
}

// HostPath is the dir that the agent sees at the fixed host path p (one of agentHostPaths).
func (a *Agent) HostPath(p string) string {
	return filepath.Join(a.Dir, "host", strings.ReplaceAll(strings.Trim(p, "/"), "/", "_"))
}

// SubnetEnv is the agent's flannel subnet.env, as the host sees it.
func (a *Agent) SubnetEnv() string { return filepath.Join(a.HostPath(runFlannel), "subnet.env") }

// CNIBinDir is where the agent's containerd finds the CNI plugins.
func (a *Agent) CNIBinDir() string { return filepath.Join(a.DataDir, "data", "cni") }

// CNIConfDir is the agent's containerd's CNI conf dir.
func (a *Agent) CNIConfDir() string {
	return filepath.Join(a.DataDir, "agent", "etc", "cni", "net.d")
}

// ContainerdLog is the agent's embedded containerd's log.
func (a *Agent) ContainerdLog() string {
	return filepath.Join(a.DataDir, "agent", "containerd", "containerd.log")
}

func (a *Agent) binDir() string { return filepath.Join(a.DataDir, "data", "current", "bin") }

// containerdSocket is the agent's containerd socket as the host sees it (its /run/k3s).
func (a *Agent) containerdSocket() string {
	return filepath.Join(a.HostPath(runK3s), "containerd", "containerd.sock")
}

// agentScript runs in the agent's new mount namespace (private propagation, made by unshare):
// for each pair of arguments "dir path" up to "--", the copy of the host's mounts at path (the
// server's kubelet, containerd and netns mounts) is detached there and dir is bound over it;
// then it execs the rest (k3s agent ...), so that the PID stays k3s's.
const agentScript = `set -e
while [ "$1" != "--" ]; do
	mkdir -p "$1" "$2"
	if mountpoint -q "$2"; then umount -l "$2"; fi
	mount --bind "$1" "$2"
	shift 2
done
shift
exec "$@"
`

// StartAgent starts a K3s agent joined to this server, in the bed's second node netns (AddNode),
// and waits until its node is Ready, its flannel subnet.env is written and kube-router's policy
// controller runs there. The agent is recorded in the host state first (its PID, its cgroup
// root), so that Close, or the next run after a kill, ends it and removes what it made.
func (n *Node) StartAgent(ctx context.Context) (*Agent, error) {
	if n.agent != nil {
		return nil, errors.New("k3s: the tier runs one agent at a time")
	}
	node2, err := n.Bed.AddNode(ctx)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(n.Dir, "agent")
	a := &Agent{Server: n, Netns: node2, Dir: dir, DataDir: filepath.Join(dir, "data"), Log: filepath.Join(dir, "k3s-agent.log"),
		CgroupName: fmt.Sprintf("nr-%d-k3s-agent", os.Getpid())}
	n.agent = a
	if err := layoutDataDir(n.Dist, a.DataDir, n.Tools); err != nil {
		return a, fmt.Errorf("laying out the agent's data dir %s: %w", a.DataDir, err)
	}
	n.state.AgentCgroups = append(n.state.AgentCgroups, a.CgroupName)
	if err := n.state.save(); err != nil {
		return a, err
	}
	if err := makeCgroup(a.CgroupName); err != nil {
		return a, err
	}
	if err := a.start(); err != nil {
		return a, err
	}
	return a, a.waitReady(ctx, 4*time.Minute)
}

// makeCgroup makes the top-level cgroup name in every hierarchy (the kubelet refuses a
// --cgroup-root that does not exist); cpuset's needs its parent's cpus and mems before a process
// can join it.
func makeCgroup(name string) error {
	for _, h := range cgroupHierarchies() {
		p := filepath.Join(h, name)
		if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("making the agent's cgroup root: %w", err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(h, f)); err == nil {
				if _, err := os.Stat(filepath.Join(p, f)); err == nil {
					if err := os.WriteFile(filepath.Join(p, f), v, 0o644); err != nil {
						return fmt.Errorf("cgroup %s: %w", filepath.Join(p, f), err)
					}
				}
			}
		}
	}
	return nil
}

func (a *Agent) args(tokenFile string) []string {
	return []string{"agent",
		"--data-dir", a.DataDir,
		"--server", "https://" + testbed.NodeUplink.String() + ":6443",
		"--token-file", tokenFile,
		"--node-name", AgentName,
		"--node-ip", testbed.Node2Uplink.String(),
		"--flannel-iface", "uplink",
		"--pause-image", PauseImage.Name,
		"--kubelet-arg", "fail-cgroupv1=false",
		"--kubelet-arg", "cgroup-root=/" + a.CgroupName,
	}
}

// start runs `nsenter --net=<node2> unshare --mount --propagation private sh -c agentScript
// <dir path>... -- k3s agent ...`. Neither nsenter nor unshare forks and sh execs k3s: the PID is
// k3s's.
func (a *Agent) start() error {
	n := a.Server
	k3s := filepath.Join(a.binDir(), "k3s")
	if n.Dist.Stock {
		k3s = n.Dist.K3s
	}
	token := filepath.Join(n.DataDir, "server", "node-token")
	if _, err := os.Stat(token); err != nil {
		return fmt.Errorf("the server's join token: %w", err)
	}
	args := []string{"--net=" + a.Netns.Path, "unshare", "--mount", "--propagation", "private", "sh", "-c", agentScript, "sh"}
	for _, p := range agentHostPaths {
		args = append(args, a.HostPath(p), p)
	}
	args = append(append(args, "--", k3s), a.args(token)...)
	cmd := exec.Command("nsenter", args...)
	var err error
	a.started, a.exited, err = n.startK3s(cmd, "the k3s agent", a.Log, a.Dir, a.CNIBinDir()+":"+a.binDir())
	if !a.started.IsZero() { // started, if not recorded
		a.cmd = cmd
	}
	return err
}

func (a *Agent) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	api := a.Server.API
	steps := []startStep{
		{"the agent's flannel subnet.env (" + a.SubnetEnv() + ")", func() error {
			fi, err := os.Stat(a.SubnetEnv())
			if err == nil && fi.ModTime().Before(a.started) {
				err = errors.New("older than this start")
			}
			return err
		}},
		{"node " + AgentName + " Ready", func() error {
			var node struct {
				Status struct {
					Conditions []struct{ Type, Status string } `json:"conditions"`
				} `json:"status"`
			}
			if err := api.Do(ctx, "GET", "/api/v1/nodes/"+AgentName, nil, &node); err != nil {
				return err
			}
			for _, c := range node.Status.Conditions {
				if c.Type == "Ready" && c.Status == "True" {
					return nil
				}
			}
			return fmt.Errorf("conditions %+v", node.Status.Conditions)
		}},
		kubeRouterStarted(ctx, "kube-router's network policy controller on the agent (KUBE-ROUTER-FORWARD)", a.Netns),
	}
	return waitSteps(ctx, "the k3s agent", steps, a.exited, a.started, a.Log)
}

// Exited is closed when the agent's k3s has exited.
func (a *Agent) Exited() <-chan struct{} { return a.exited }

// Crictl runs `k3s crictl` against the agent's containerd.
func (a *Agent) Crictl(ctx context.Context, args ...string) (string, error) {
	return crictl(ctx, filepath.Join(a.binDir(), "crictl"), a.containerdSocket(), args...)
}

// LiveChain is Node.LiveChain for the agent's containerd.
func (a *Agent) LiveChain(ctx context.Context) ([]string, error) {
	out, err := a.Crictl(ctx, "info")
	if err != nil {
		return nil, err
	}
	return chainFromInfo([]byte(out))
}

// InstallNetready runs `netready install --data-dir <the agent's data dir> --log-file LOG` plus
// args, as a user does on an agent node, and fails unless it exits 0.
func (a *Agent) InstallNetready(ctx context.Context, logFile string, args ...string) (CLIResult, error) {
	r, err := a.Server.Netready(ctx, append([]string{"install", "--data-dir", a.DataDir, "--log-file", logFile}, args...)...)
	if err == nil && r.Code != 0 {
		err = fmt.Errorf("netready install on the agent %s: %s", strings.Join(args, " "), r)
	}
	return r, err
}

// UninstallNetready runs `netready uninstall --data-dir <the agent's data dir>`.
func (a *Agent) UninstallNetready(ctx context.Context) (CLIResult, error) {
	r, err := a.Server.Netready(ctx, "uninstall", "--data-dir", a.DataDir)
	if err == nil && r.Code != 0 {
		err = fmt.Errorf("netready uninstall on the agent: %s", r)
	}
	return r, err
}

// Close removes the agent's pods (crictl, through its socket), stops its k3s (SIGTERM, SIGKILL
// after 30 s), ends by PID what is left of it (its shims and plugins: executables in its dir;
// its pods: its cgroup root), removes its cgroup root and its Node object. Its mount namespace
// goes with its last process, and its mounts with it; its dir goes with the server's run dir,
// node2 with the bed. It reports what it could not undo.
func (a *Agent) Close() error {
	if a == nil || a.Server.agent != a {
		return nil
	}
	a.Server.agent = nil
	var errs []error
	a.stop()
	for range 50 {
		pids := a.leftoverProcs()
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if pids := a.leftoverProcs(); len(pids) > 0 {
		errs = append(errs, fmt.Errorf("k3s agent: processes left: %v", pids))
	}
	for _, h := range cgroupHierarchies() {
		if err := removeCgroupTree(filepath.Join(h, a.CgroupName)); err != nil {
			errs = append(errs, err)
		}
	}
	if a.Server.API != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := a.Server.API.Do(ctx, "DELETE", "/api/v1/nodes/"+AgentName, nil, nil); err != nil && !IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting node %s: %w", AgentName, err))
		}
		cancel()
	}
	return errors.Join(errs...)
}

// stop removes the agent's pod sandboxes (crictl rmp -af: CNI DEL, shims end) and ends its k3s
// by PID (SIGTERM, SIGKILL after 30 s).
func (a *Agent) stop() {
	if a.cmd == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	a.Crictl(ctx, "rmp", "-af")
	cancel()
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(30 * time.Second):
		a.cmd.Process.Kill()
		<-a.exited
	}
	a.cmd = nil
}

// Restart stops the agent (its pod sandboxes removed first, so that none is left in the old
// mount namespace) and starts it again on the same data dir, in a new mount namespace over the
// same dirs, then waits for it as StartAgent does.
func (a *Agent) Restart(ctx context.Context) error {
	a.stop()
	if err := a.start(); err != nil {
		return err
	}
	return a.waitReady(ctx, 3*time.Minute)
}

// leftoverProcs are the agent's processes: executables in its dir (k3s, containerd, shims,
// runc, CNI plugins), and every process in its cgroup root.
func (a *Agent) leftoverProcs() []int {
	pids := testbed.Pids(func(_ int, dir string) bool {
		return strings.HasPrefix(testbed.ProcExe(dir), a.Dir+"/")
	})
	for _, h := range cgroupHierarchies() {
		pids = append(pids, cgroupPids(filepath.Join(h, a.CgroupName))...)
	}
	slices.Sort(pids)
	return slices.Compact(pids)
}
