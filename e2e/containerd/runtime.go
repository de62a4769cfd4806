package containerd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// maxSocketDirLen is containerd's limit on the shim socket dir (core/runtime/v2/socket_linux.go):
// the sockets are <dir>/<64 hex digits> and must fit in sun_path.
const maxSocketDirLen = 42

// ConflistName is the file the runtime's CNI conf dir holds: containerd loads only the lexically
// first conflist, as with K3s's 10-flannel.conflist.
const ConflistName = "10-flannel.conflist"

// Options shape a Runtime.
type Options struct {
	// Conflist is the CNI network list under test (JSON). Start localizes it into the bed
	// (Bed.ConfList: flannel's subnet.env and dataDirs) and writes it to the conf dir.
	Conflist []byte
	// Tools is the dir of the runtime's binaries. Default Tools().
	Tools string
}

// Runtime is one containerd with its CRI plugin, started in a bed's node netns with
// `nsenter --net=<node>`, so that the CNI plugins it runs (from the bed's bin dir) and the pod
// netns' veths live in the node, as on a K3s node. Everything it writes is under Dir; the pods'
// cgroups are under CgroupParent. Close stops it and removes all of it.
type Runtime struct {
	Dir          string // root, state, sockets, conf, logs and reports
	Socket       string // containerd's gRPC socket: CRI for crictl, containerd API for ctr
	ConfDir      string // the CNI conf dir
	CgroupParent string // cgroupfs parent of every pod, e.g. /nr-4242-ctr-123
	LogFile      string // containerd's stdout and stderr

	bed    *testbed.Bed
	tools  string
	cmd    *exec.Cmd
	exited chan struct{} // closed when containerd has exited; waitErr is then set
	// written before exited is closed
	waitErr error

	closeOnce sync.Once
	closeErr  error
}

// Start starts containerd in bed's node netns with the conflist under test, waits until the CRI
// plugin reports the runtime and the network ready, and imports PauseImage and ProbeImage. On
// error, whatever was started is stopped and removed. The caller must Close the Runtime.
func Start(ctx context.Context, bed *testbed.Bed, opts Options) (_ *Runtime, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("containerd: must run as root (containerd, runc, network namespaces)")
	}
	tools := opts.Tools
	if tools == "" {
		if tools, err = Tools(); err != nil {
			return nil, err
		}
	}
	list, err := bed.ConfList(opts.Conflist)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("nr-%d-ctr-", os.Getpid()))
	if err != nil {
		return nil, err
	}
	r := &Runtime{
		Dir:          dir,
		Socket:       filepath.Join(dir, "containerd.sock"),
		ConfDir:      filepath.Join(dir, "net.d"),
		CgroupParent: "/" + filepath.Base(dir),
		LogFile:      filepath.Join(dir, "containerd.log"),
		bed:          bed,
		tools:        tools,
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.Close())
		}
	}()
	if n := len(r.socketDir()); n > maxSocketDirLen {
		return r, fmt.Errorf("containerd: shim socket dir %s is %d characters, containerd allows %d: set TMPDIR to a shorter dir", r.socketDir(), n, maxSocketDirLen)
	}
	for _, d := range []string{r.ConfDir, r.path("pods"), r.path("logs"), r.path("reports"), r.path("images")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return r, err
		}
	}
	if err := os.WriteFile(filepath.Join(r.ConfDir, ConflistName), list.Bytes, 0o644); err != nil {
		return r, err
	}
	if err := os.WriteFile(r.path("config.toml"), []byte(r.config()), 0o644); err != nil {
		return r, err
	}
	// crictl reads /etc/crictl.yaml unless told otherwise: point it at an empty one of ours.
	if err := os.WriteFile(r.path("crictl.yaml"), nil, 0o644); err != nil {
		return r, err
	}
	if err := r.start(); err != nil {
		return r, err
	}
	if err := r.waitReady(ctx); err != nil {
		return r, err
	}
	for _, img := range []Image{PauseImage, ProbeImage} {
		if err := r.Import(ctx, img); err != nil {
			return r, err
		}
	}
	return r, nil
}

func (r *Runtime) path(elem ...string) string {
	return filepath.Join(append([]string{r.Dir}, elem...)...)
}

func (r *Runtime) socketDir() string { return r.path("s") }

// config is containerd's config, in version 3 of the format (containerd 2.0's; 2.4 migrates it
// in memory and logs that it did): every path under Dir, nothing read from or written to the
// machine's /etc/containerd, /var/lib/containerd, /run/containerd, /opt/containerd or NRI's
// socket. AppArmor is off so that the CRI plugin loads no profile into the host's kernel.
func (r *Runtime) config() string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) } // TOML basic string
	return fmt.Sprintf(`version = 3
root = %[1]s
state = %[2]s
temp = %[3]s
imports = []
disabled_plugins = [
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.blockfile',
  'io.containerd.snapshotter.v1.erofs',
]

[grpc]
  address = %[4]s

[ttrpc]
  address = %[5]s

[debug]
  level = 'info'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[6]s

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  enable_criu = false
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      runtime_path = %[7]s
      sandboxer = 'podsandbox'
      disable_pause_image_pull = true
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %[8]s
        Root = %[9]s
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%[10]s]
    conf_dir = %[11]s
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'

[plugins.'io.containerd.internal.v1.opt']
  path = %[12]s

[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = %[13]s

[plugins.'io.containerd.shim.v1.manager']
  socket_dir = %[14]s
`,
		q(r.path("root")), q(r.path("state")), q(r.path("tmp")),
		q(r.Socket), q(r.Socket+".ttrpc"),
		q(PauseImage.Name),
		q(filepath.Join(r.tools, Shim)), q(filepath.Join(r.tools, Runc)), q(r.path("runc")),
		q(r.bed.BinDir), q(r.ConfDir),
		q(r.path("opt")), q(r.path("image-verifier")), q(r.socketDir()))
}

// start runs `nsenter --net=<node netns> containerd --config ...`. nsenter (no --fork) execs
// containerd in place, so the pid is containerd's; Pdeathsig kills it if the test process dies,
// and the thread that forked it stays locked until it exits (Pdeathsig fires when the forking
// thread ends, and the Go runtime may end threads that a goroutine locked).
func (r *Runtime) start() error {
	logf, err := os.OpenFile(r.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("nsenter", "--net="+r.bed.Node.Path, "--",
		filepath.Join(r.tools, Containerd), "--config", r.path("config.toml"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "PATH="+r.tools+":"+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	r.cmd = cmd
	r.exited = make(chan struct{})
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer logf.Close()
		if err := cmd.Start(); err != nil {
			started <- err
			r.waitErr = err
			close(r.exited)
			return
		}
		started <- nil
		r.waitErr = cmd.Wait()
		close(r.exited)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("starting containerd: %w", err)
	}
	return nil
}

// waitReady polls `crictl info` until the CRI plugin reports RuntimeReady and NetworkReady (the
// latter once it has loaded the conflist), for at most a minute.
func (r *Runtime) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var last error
	for {
		select {
		case <-r.exited:
			return fmt.Errorf("containerd exited (%v) before it was ready:\n%s", r.waitErr, r.LogTail(40))
		default:
		}
		// crictl's first dial blocks for its whole --timeout if the socket is not there yet.
		var out []byte
		_, err := os.Stat(r.Socket)
		if err == nil {
			out, err = r.crictl(ctx, 5*time.Second, "info")
		}
		if err == nil {
			var info struct {
				Status struct {
					Conditions []struct {
						Type    string `json:"type"`
						Status  bool   `json:"status"`
						Reason  string `json:"reason"`
						Message string `json:"message"`
					} `json:"conditions"`
				} `json:"status"`
			}
			if err = json.Unmarshal(out, &info); err == nil {
				ready := 0
				for _, c := range info.Status.Conditions {
					if c.Status && (c.Type == "RuntimeReady" || c.Type == "NetworkReady") {
						ready++
					} else if !c.Status {
						err = fmt.Errorf("%s: %s %s", c.Type, c.Reason, c.Message)
					}
				}
				if ready == 2 {
					return nil
				}
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("containerd not ready within a minute: %v\n%s", last, r.LogTail(40))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Import writes img as an OCI archive and imports it with `ctr -n k8s.io images import`, then
// waits until the CRI plugin lists it.
func (r *Runtime) Import(ctx context.Context, img Image) error {
	tarball := r.path("images", strings.NewReplacer("/", "_", ":", "_").Replace(img.Name)+".tar")
	if err := WriteOCIArchiveFile(tarball, img, r.tools); err != nil {
		return err
	}
	if _, err := r.Ctr(ctx, "images", "import", tarball); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		_, err := r.Crictl(ctx, "inspecti", img.Name)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("image %s imported but not seen by the CRI plugin: %v", img.Name, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Crictl runs crictl against the runtime (any netns will do: the socket is a path) and returns
// its stdout; an error carries its stderr.
// Each request may take up to 2 minutes (the kubelet's RunPodSandbox budget is about 4).
func (r *Runtime) Crictl(ctx context.Context, args ...string) ([]byte, error) {
	return r.crictl(ctx, 2*time.Minute, args...)
}

func (r *Runtime) crictl(ctx context.Context, timeout time.Duration, args ...string) ([]byte, error) {
	endpoint := "unix://" + r.Socket
	return r.run(ctx, Crictl, append([]string{"--config", r.path("crictl.yaml"),
		"--runtime-endpoint", endpoint, "--image-endpoint", endpoint, "--timeout", timeout.String()}, args...)...)
}

// Ctr runs ctr in the k8s.io namespace (the CRI plugin's) against the runtime.
func (r *Runtime) Ctr(ctx context.Context, args ...string) ([]byte, error) {
	return r.run(ctx, Ctr, append([]string{"--address", r.Socket, "--namespace", "k8s.io"}, args...)...)
}

func (r *Runtime) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(r.tools, name), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// LogTail returns the last n lines of containerd's log.
func (r *Runtime) LogTail(n int) string {
	b, err := os.ReadFile(r.LogFile)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Close removes every pod (StopPodSandbox and RemovePodSandbox: the CNI DEL runs), stops
// containerd (SIGTERM, SIGKILL after 10 s), kills what is left of its shims, runc and the
// containers, unmounts everything under Dir, removes the pods' cgroups and Dir, and then checks
// that none of it is left. It is safe to call more than once.
func (r *Runtime) Close() error {
	r.closeOnce.Do(func() { r.closeErr = r.close() })
	return r.closeErr
}

func (r *Runtime) close() error {
	var errs []error
	if r.cmd != nil {
		select {
		case <-r.exited:
		default:
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			errs = append(errs, r.removePods(ctx))
			cancel()
			errs = append(errs, r.stop())
		}
	}
	errs = append(errs, removeRuntimeDir(r.Dir, r.CgroupParent))
	return errors.Join(errs...)
}

// removePods stops and removes every pod the CRI plugin knows.
func (r *Runtime) removePods(ctx context.Context) error {
	out, err := r.Crictl(ctx, "pods", "-q")
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range strings.Fields(string(out)) {
		if _, err := r.Crictl(ctx, "stopp", id); err != nil {
			errs = append(errs, err)
		}
		if _, err := r.Crictl(ctx, "rmp", "-f", id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (r *Runtime) stop() error {
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
		return nil
	case <-time.After(10 * time.Second):
	}
	r.cmd.Process.Kill()
	select {
	case <-r.exited:
		return errors.New("containerd did not stop within 10 s of SIGTERM; killed it")
	case <-time.After(10 * time.Second):
		return fmt.Errorf("containerd (pid %d) did not die of SIGKILL within 10 s", r.cmd.Process.Pid)
	}
}
