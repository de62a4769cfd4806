package k3s

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netready/netready/e2e/testbed"
)

// stateFile records, before K3s touches anything, what the host looked like and what was
// started, so that the next run can restore it after a run that was killed before its cleanup.
const stateFile = "/run/netready-e2e-k3s/state.json"

// lockFile serialises the runs of this tier on one machine: K3s's host paths are fixed.
const lockFile = "/run/netready-e2e-k3s/lock"

// Host sysctls the kubelet changes (global, not per netns).
var hostSysctls = []string{"kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory"}

// pathsK3sMakes are the fixed host paths a K3s node creates; each is removed afterwards if it
// was not there before.
var pathsK3sMakes = []string{kubeletDir, runK3s, runFlannel, etcRancher, logPods, logCtrs, "/run/containerd", "/var/lib/rancher"}

// hostState is what the host was before K3s started, and what this run started.
type hostState struct {
	Owner       int               `json:"owner"` // the test process
	Dir         string            `json:"dir"`   // the run's temp dir (data dir inside)
	K3sPIDs     []int             `json:"k3s_pids"`
	Sysctls     map[string]string `json:"sysctls"`
	Existed     map[string]bool   `json:"existed"`     // pathsK3sMakes that were there before
	CNIFiles    []string          `json:"cni_files"`   // every path under /var/lib/cni before
	LastIP      map[string]string `json:"last_ip"`     // last_reserved_ip.* files' contents before
	Netns       []string          `json:"netns"`       // /run/netns entries before
	CgroupsPre  []string          `json:"cgroups_pre"` // top-level cgroup dirs before
	Hierarchies []string          `json:"hierarchies"` // cgroup hierarchies seen
	// AgentCgroups are the top-level cgroups (a name, in every hierarchy) made as a K3s
	// agent's kubelet --cgroup-root (StartAgent); recorded before they are made.
	AgentCgroups []string `json:"agent_cgroups,omitempty"`
}

func (s *hostState) save() error {
	data, err := json.MarshalIndent(s, "", " ")
	if err != nil {
		return err
	}
	tmp := stateFile + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, stateFile)
}

// recordHost reads the host's state before a run.
func recordHost(dir string) (*hostState, error) {
	s := &hostState{Owner: os.Getpid(), Dir: dir, Sysctls: map[string]string{}, Existed: map[string]bool{}, LastIP: map[string]string{}}
	for _, k := range hostSysctls {
		v, err := os.ReadFile(filepath.Join("/proc/sys", k))
		if err != nil {
			return nil, err
		}
		s.Sysctls[k] = strings.TrimSpace(string(v))
	}
	for _, p := range pathsK3sMakes {
		if _, err := os.Lstat(p); err == nil {
			s.Existed[p] = true
		}
	}
	filepath.WalkDir(varLibCNI, func(path string, d os.DirEntry, err error) error {
		if err == nil {
			s.CNIFiles = append(s.CNIFiles, path)
			if strings.HasPrefix(d.Name(), "last_reserved_ip") {
				b, _ := os.ReadFile(path)
				s.LastIP[path] = string(b)
			}
		}
		return nil
	})
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		s.Netns = append(s.Netns, e.Name())
	}
	s.Hierarchies = cgroupHierarchies()
	for _, h := range s.Hierarchies {
		entries, _ := os.ReadDir(h)
		for _, e := range entries {
			if e.IsDir() {
				s.CgroupsPre = append(s.CgroupsPre, filepath.Join(h, e.Name()))
			}
		}
	}
	return s, nil
}

// busy reports a K3s (or leftovers no state file explains) already on the host.
func busy(s *hostState) error {
	for _, p := range []string{kubeletDir, runK3s, runFlannel} {
		if s.Existed[p] {
			return fmt.Errorf("%s exists: another K3s (or kubelet) runs on this host, or a run left it without a state file; this tier needs the host's fixed K3s paths for itself (remove it if nothing uses it)", p)
		}
	}
	return nil
}

// restoreHost undoes what a run did, from its state: every process of K3s and its pods ended
// by PID, mounts unmounted, paths K3s made removed, /var/lib/cni and the sysctls put back.
// It returns everything that could not be restored.
func restoreHost(s *hostState) error {
	var errs []error
	for _, pid := range s.K3sPIDs {
		if running(pid) && isK3s(pid) {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	for range 100 {
		if !slices.ContainsFunc(s.K3sPIDs, func(p int) bool { return running(p) && isK3s(p) }) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, pid := range s.K3sPIDs {
		if running(pid) && isK3s(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	// Shims (their -address names /run/k3s/containerd), then whatever is left in the pods' cgroups.
	for range 50 {
		pids := leftoverProcs(s)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if pids := leftoverProcs(s); len(pids) > 0 {
		errs = append(errs, fmt.Errorf("processes still running: %v", pids))
	}
	var mounted []string
	for _, p := range []string{kubeletDir, runK3s, "/run/containerd", s.Dir} {
		if p != "" {
			mounted = append(mounted, p)
		}
	}
	for _, e := range newNetns(s) {
		mounted = append(mounted, filepath.Join("/run/netns", e))
	}
	for _, p := range mounted {
		if err := testbed.UnmountUnder(p); err != nil {
			errs = append(errs, err)
		}
	}
	for _, e := range newNetns(s) {
		os.Remove(filepath.Join("/run/netns", e))
	}
	for _, cg := range newCgroups(s) {
		if err := removeCgroupTree(cg); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range pathsK3sMakes {
		if !s.Existed[p] {
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if s.Dir != "" {
		if err := os.RemoveAll(s.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, restoreCNI(s))
	for k, v := range s.Sysctls {
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restoring sysctl %s=%s: %w", k, v, err))
		}
	}
	return errors.Join(errs...)
}

// restoreCNI removes what appeared under /var/lib/cni since the state was taken and puts the
// host-local last_reserved_ip files back.
func restoreCNI(s *hostState) error {
	var now []string
	filepath.WalkDir(varLibCNI, func(path string, d os.DirEntry, err error) error {
		if err == nil {
			now = append(now, path)
		}
		return nil
	})
	slices.Reverse(now) // children before their dirs
	var errs []error
	for _, p := range now {
		if !slices.Contains(s.CNIFiles, p) {
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for p, v := range s.LastIP {
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func newNetns(s *hostState) []string {
	var out []string
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "cni-") && !slices.Contains(s.Netns, e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

// newCgroups are the top-level cgroup dirs made since the state was taken by the kubelet
// (kubepods, and the like): only names the kubelet uses, never another test's.
func newCgroups(s *hostState) []string {
	var out []string
	for _, h := range cgroupHierarchies() {
		entries, _ := os.ReadDir(h)
		for _, e := range entries {
			p := filepath.Join(h, e.Name())
			if e.IsDir() && !slices.Contains(s.CgroupsPre, p) && (strings.HasPrefix(e.Name(), "kubepods") || e.Name() == "k3s" || slices.Contains(s.AgentCgroups, e.Name())) {
				out = append(out, p)
			}
		}
	}
	return out
}

func cgroupHierarchies() []string {
	const root = "/sys/fs/cgroup"
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		return []string{root}
	}
	var hs []string
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if e.IsDir() {
			hs = append(hs, filepath.Join(root, e.Name()))
		}
	}
	return hs
}

// leftoverProcs are the processes of K3s's containerd and pods: the shims (their command line
// names /run/k3s/containerd, or the run's dir), every process whose executable is in the run's
// dir (an agent's shims and CNI plugins, in the agent's mount namespace) and every process in the
// kubelets' cgroups.
func leftoverProcs(s *hostState) []int {
	pids := testbed.Pids(func(_ int, dir string) bool {
		c := testbed.ProcCmdline(dir)
		return strings.Contains(c, "/run/k3s/containerd") || (s.Dir != "" && (strings.Contains(c, s.Dir) || strings.HasPrefix(testbed.ProcExe(dir), s.Dir+"/")))
	})
	for _, cg := range newCgroups(s) {
		pids = append(pids, cgroupPids(cg)...)
	}
	slices.Sort(pids)
	return slices.Compact(pids)
}

// cgroupPids lists the processes in the cgroup dir and the cgroups below it, this one left out.
func cgroupPids(dir string) []int {
	var pids []int
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

func removeCgroupTree(top string) error {
	var last error
	for range 20 {
		var tree []string
		filepath.WalkDir(top, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				tree = append(tree, path)
			}
			return nil
		})
		slices.Reverse(tree)
		last = nil
		for _, d := range tree {
			if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
				last = fmt.Errorf("rmdir %s: %w", d, err)
			}
		}
		if last == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

func running(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == nil
}

// isK3s tells a PID of ours from a reused one: its executable is a k3s binary.
func isK3s(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	return strings.Contains(filepath.Base(exe), "k3s")
}

// removeStale restores the host after a run that was killed before its cleanup: its state file
// names an owner that no longer runs.
func removeStale() (string, error) {
	data, err := os.ReadFile(stateFile)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	var s hostState
	if err := json.Unmarshal(data, &s); err != nil {
		os.Remove(stateFile)
		return "", fmt.Errorf("%s: %w (removed it)", stateFile, err)
	}
	if running(s.Owner) && s.Owner != os.Getpid() {
		return "", fmt.Errorf("run %d (still running) owns the K3s node: %s", s.Owner, stateFile)
	}
	err = restoreHost(&s)
	if err == nil {
		os.Remove(stateFile)
	}
	return fmt.Sprintf("K3s node of process %d (k3s PIDs %v, dir %s)", s.Owner, s.K3sPIDs, s.Dir), err
}
