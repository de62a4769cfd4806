package k3s

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netready/netready/e2e/testbed"

	"github.com/netready/netready/internal/testbin"
)

// Start brings a K3s node up for a test binary: it takes the tier's host lock, restores what a
// killed run left, records the host (stateFile), lays out a data dir in a temp dir, builds the
// bed (node, router and db netns), starts K3s in the node netns and waits until pods can run.
// skip is set (and the node nil) when this machine cannot run the tier: not root, or no K3s.
// Close the node, also on error (it is then non-nil when something needs undoing).
func Start(ctx context.Context, repoRoot string) (n *Node, skip string, err error) {
	if os.Geteuid() != 0 {
		return nil, "needs root: runs a K3s node (kubelet, containerd, flannel) in network namespaces (CI runs as root)", nil
	}
	dist, skip, err := FindDist(repoRoot)
	if skip != "" || err != nil {
		return nil, skip, err
	}
	for _, tool := range []string{"nsenter", "ip", "nft", "iptables", "ipset"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, "", fmt.Errorf("%s not found: K3s and the tier need it (scripts/test-deps.sh installs it)", tool)
		}
	}
	if err := os.MkdirAll(filepath.Dir(lockFile), 0o755); err != nil {
		return nil, "", err
	}
	lock, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, "", err
	}
	// Another run of this tier on the machine: wait for it (K3s's host paths are fixed).
	if err := flockWait(ctx, lock, 30*time.Minute); err != nil {
		lock.Close()
		return nil, "", err
	}
	if what, err := removeStale(); err != nil {
		lock.Close()
		return nil, "", fmt.Errorf("restoring the host after a killed run: %w", err)
	} else if what != "" {
		fmt.Fprintln(os.Stderr, "k3s: restored the host after a killed run:", what)
	}
	// Then the bed's netns and dirs of dead runs (after K3s's mounts in them are gone).
	if removed, err := testbed.RemoveStale(); err != nil {
		fmt.Fprintln(os.Stderr, "k3s: removing testbed leftovers:", err)
	} else {
		for _, r := range removed {
			fmt.Fprintln(os.Stderr, "k3s: removed a testbed leftover:", r)
		}
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("nr-%d-k3s-", os.Getpid()))
	if err != nil {
		lock.Close()
		return nil, "", err
	}
	st, err := recordHost(dir)
	if err == nil {
		err = busy(st)
	}
	if err == nil {
		err = st.save()
	}
	if err != nil {
		os.RemoveAll(dir)
		lock.Close()
		return nil, "", err
	}
	n = &Node{
		Dist:       dist,
		Dir:        dir,
		DataDir:    filepath.Join(dir, "data"),
		Kubeconfig: filepath.Join(dir, "kubeconfig.yaml"),
		Log:        filepath.Join(dir, "k3s.log"),
		Tools:      filepath.Join(dir, "tools"),
		state:      st,
		lock:       lock,
	}
	if err := buildTools(n.Tools); err != nil {
		return n, "", err
	}
	if n.Bed, err = testbed.Start(ctx, testbed.Options{BinDir: n.Tools}); err != nil {
		return n, "", err
	}
	if err := n.layout(); err != nil {
		return n, "", fmt.Errorf("laying out K3s's data dir %s: %w", n.DataDir, err)
	}
	if err := n.start(); err != nil {
		return n, "", err
	}
	if err := n.waitReady(ctx, 4*time.Minute); err != nil {
		return n, "", err
	}
	return n, "", nil
}

// Close deletes the tier's namespaces and pods, stops K3s, and restores the host (restoreHost);
// then the bed's netns go. It checks what the README promises: no k3s or shim process, no mount
// under /var/lib/kubelet or /run/k3s.
func (n *Node) Close() error {
	if n == nil {
		return nil
	}
	if n.closed {
		return nil
	}
	n.closed = true
	var errs []error
	if n.cmd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		// The pods first, so that containerd tears their sandboxes down (CNI DEL, netns) itself.
		if n.API != nil {
			n.deleteNamespaces(ctx)
		}
		n.Crictl(ctx, "rmp", "-af")
		cancel()
		errs = append(errs, n.agent.Close()) // before the server: it deletes its Node object
		n.stop(30 * time.Second)
	}
	if dst := os.Getenv(LogsEnv); dst != "" {
		n.saveLogs(dst)
	}
	if n.state != nil {
		errs = append(errs, restoreHost(n.state))
	}
	if n.Bed != nil {
		errs = append(errs, n.Bed.Close())
	}
	if n.state != nil {
		if pids := leftoverProcs(n.state); len(pids) > 0 {
			errs = append(errs, fmt.Errorf("k3s: processes left: %v", pids))
		}
		for _, p := range []string{kubeletDir, runK3s} {
			if m := testbed.MountsUnder(p); len(m) > 0 {
				errs = append(errs, fmt.Errorf("k3s: still mounted: %s", strings.Join(m, ", ")))
			}
		}
		if err := errors.Join(errs...); err == nil {
			os.Remove(stateFile)
		}
	}
	if n.lock != nil {
		n.lock.Close()
	}
	return errors.Join(errs...)
}

func flockWait(ctx context.Context, f *os.File, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("locking %s: %w", f.Name(), err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: another run of the K3s tier held it for %v", f.Name(), limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// buildTools builds the images' programs (static) and netready into dir.
func buildTools(dir string) error {
	root, err := testbed.ModuleRoot()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// app is this module's; pause and netready are the root module's.
	for _, b := range []struct{ name, dir, pkg string }{
		{"pause", root, "./e2e/pause"},
		{"app", filepath.Join(root, "e2e", "k3s"), "./cmd/app"},
		{"netready", root, "./plugin/netready"},
	} {
		if err := testbin.GoBuild(b.dir, filepath.Join(dir, b.name), nil, []string{"-ldflags=-s -w"}, b.pkg); err != nil {
			return err
		}
	}
	return nil
}

// LogsEnv names a dir where Close copies K3s's and containerd's logs (the run's dir is removed).
const LogsEnv = "NETREADY_K3S_LOGS"

func (n *Node) saveLogs(dst string) {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "k3s:", err)
		return
	}
	for name, src := range map[string]string{"k3s.log": n.Log, "containerd.log": n.ContainerdLog()} {
		if data, err := os.ReadFile(src); err == nil {
			os.WriteFile(filepath.Join(dst, name), data, 0o644)
		}
	}
}

// deleteNamespaces deletes the tier's namespaces and waits (up to ctx) until they are gone.
func (n *Node) deleteNamespaces(ctx context.Context) {
	var list struct {
		Items []struct {
			Metadata struct{ Name string } `json:"metadata"`
		} `json:"items"`
	}
	if err := n.API.Do(ctx, "GET", "/api/v1/namespaces?labelSelector=netready-e2e%3D1", nil, &list); err != nil {
		return
	}
	for _, ns := range list.Items {
		n.API.Do(ctx, "DELETE", "/api/v1/namespaces/"+ns.Metadata.Name, nil, nil)
	}
	for _, ns := range list.Items {
		for n.API.Do(ctx, "GET", "/api/v1/namespaces/"+ns.Metadata.Name, nil, nil) == nil && ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond)
		}
	}
}
