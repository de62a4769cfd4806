package testbed

import (
	"os"
	"path/filepath"
	"strconv"
)

// Pids lists the processes, this one left out, for which match is true; match gets the pid and
// its /proc dir, to read what it tells them apart by (ProcExe, ProcCmdline, comm, environ ...).
// A process that exits meanwhile is simply not listed.
func Pids(match func(pid int, dir string) bool) []int {
	var pids []int
	self := os.Getpid()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if match(pid, filepath.Join("/proc", e.Name())) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ProcExe is the path of the executable of the process at dir (a /proc/PID), "" if unreadable.
func ProcExe(dir string) string {
	exe, _ := os.Readlink(filepath.Join(dir, "exe"))
	return exe
}

// ProcCmdline is the command line of the process at dir, its arguments NUL-separated; "" if
// unreadable.
func ProcCmdline(dir string) string {
	b, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
	return string(b)
}
