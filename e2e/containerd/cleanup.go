package containerd

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netready/netready/e2e/testbed"
)

// cgroupRoot is where the cgroup hierarchies are mounted (v1 controllers, or v2 alone).
const cgroupRoot = "/sys/fs/cgroup"

// removeRuntimeDir removes what a runtime left under dir and in its cgroup parent, in the order
// that lets each step succeed: the processes (shims and runc by their command lines, which name
// dir; the containers by their cgroups), then the mounts under dir (rootfs overlays, the pods'
// /dev/shm, the netns bind mounts), then the cgroups, then dir. It then checks that nothing is
// left and says what is.
func removeRuntimeDir(dir, cgroupParent string) error {
	var errs []error
	for range 50 { // processes in their cgroups can take a moment to die after SIGKILL
		pids := runtimeProcs(dir, cgroupParent)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	errs = append(errs, testbed.UnmountUnder(dir))
	errs = append(errs, removeCgroups(cgroupParent))
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}

	if pids := runtimeProcs(dir, cgroupParent); len(pids) > 0 {
		errs = append(errs, fmt.Errorf("processes of %s still running: %s", dir, describeProcs(pids)))
	}
	if mounts := testbed.MountsUnder(dir); len(mounts) > 0 {
		errs = append(errs, fmt.Errorf("still mounted: %s", strings.Join(mounts, ", ")))
	}
	if cgs := cgroupDirs(cgroupParent); len(cgs) > 0 {
		errs = append(errs, fmt.Errorf("cgroups left: %s", strings.Join(cgs, ", ")))
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("%s still exists (%v)", dir, err))
	}
	return errors.Join(errs...)
}

// runtimeProcs lists the processes of the runtime in dir: those whose command line names dir
// (containerd's --config, the shims' -address, runc's --root) and those in the pods' cgroups
// (pause, the containers, runc init). Never this process.
func runtimeProcs(dir, cgroupParent string) []int {
	pids := testbed.Pids(func(_ int, proc string) bool { return strings.Contains(testbed.ProcCmdline(proc), dir) })
	for _, cg := range cgroupDirs(cgroupParent) {
		b, err := os.ReadFile(filepath.Join(cg, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				pids = append(pids, pid)
			}
		}
	}
	slices.Sort(pids)
	return slices.Compact(pids)
}

func describeProcs(pids []int) string {
	var s []string
	for _, pid := range pids {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		s = append(s, fmt.Sprintf("%d (%s)", pid, strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))))
	}
	return strings.Join(s, "; ")
}

// cgroupDirs lists the cgroup dirs of parent in every hierarchy, children before their parents.
func cgroupDirs(parent string) []string {
	if parent == "" || parent == "/" {
		return nil
	}
	var hierarchies []string
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		hierarchies = []string{cgroupRoot} // cgroup v2 alone
	} else {
		entries, _ := os.ReadDir(cgroupRoot)
		for _, e := range entries {
			if e.IsDir() {
				hierarchies = append(hierarchies, filepath.Join(cgroupRoot, e.Name()))
			}
		}
	}
	var dirs []string
	for _, h := range hierarchies {
		top := filepath.Join(h, parent)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		var tree []string
		filepath.WalkDir(top, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				tree = append(tree, path)
			}
			return nil
		})
		slices.Reverse(tree) // WalkDir is lexical: a parent comes before its children
		dirs = append(dirs, tree...)
	}
	return dirs
}

// removeCgroups rmdirs the cgroups of parent (a cgroup dir goes with rmdir once empty; its
// files cannot be unlinked, so no RemoveAll).
func removeCgroups(parent string) error {
	var errs []error
	for range 20 {
		errs = errs[:0]
		for _, d := range cgroupDirs(parent) {
			if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
			}
		}
		if len(errs) == 0 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.Join(errs...)
}

// staleName matches the runtime dirs (in TMPDIR) and cgroup parents of any process: nr-<pid>-ctr-...
var staleName = regexp.MustCompile(`^nr-([0-9]+)-ctr-`)

// RemoveStale stops and removes what runtimes of processes that no longer exist left behind
// (a test binary killed, or stopped by `go test -timeout`, before its cleanup ran): their shims,
// containers and mounts, their cgroups and dirs. It returns what it removed. Runtimes of live
// processes, including this one, are left alone. Call it before testbed.RemoveStale, which
// would otherwise try to remove such a dir with its mounts still in place.
func RemoveStale() ([]string, error) {
	dead := func(name string) bool {
		m := staleName.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		pid, err := strconv.Atoi(m[1])
		return err == nil && pid != os.Getpid() && !running(pid)
	}
	names := map[string]bool{}
	if entries, err := os.ReadDir(os.TempDir()); err == nil {
		for _, e := range entries {
			if e.IsDir() && dead(e.Name()) {
				names[e.Name()] = true
			}
		}
	}
	for _, cg := range cgroupDirsAtRoot() {
		if dead(cg) {
			names[cg] = true
		}
	}
	var removed []string
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(names)) {
		if err := removeRuntimeDir(filepath.Join(os.TempDir(), name), "/"+name); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, name)
	}
	return removed, errors.Join(errs...)
}

// running reports whether pid is a process that has not exited: a zombie (dead, not yet reaped
// by init, which may take seconds here) is not running.
func running(pid int) bool {
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces and parentheses, the state follows the last ')'.
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// cgroupDirsAtRoot lists the names of the top-level cgroups in every hierarchy.
func cgroupDirsAtRoot() []string {
	var names []string
	roots := []string{cgroupRoot}
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err != nil {
		entries, _ := os.ReadDir(cgroupRoot)
		roots = roots[:0]
		for _, e := range entries {
			if e.IsDir() {
				roots = append(roots, filepath.Join(cgroupRoot, e.Name()))
			}
		}
	}
	for _, root := range roots {
		entries, _ := os.ReadDir(root)
		for _, e := range entries {
			if e.IsDir() {
				names = append(names, e.Name())
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}
