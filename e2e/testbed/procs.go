package testbed

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// ProcEnv is the value of key in the environment of the process at dir, and whether it is set.
func ProcEnv(dir, key string) (string, bool) {
	env, _ := os.ReadFile(filepath.Join(dir, "environ"))
	for kv := range bytes.SplitSeq(env, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte(key+"=")); ok {
			return string(v), true
		}
	}
	return "", false
}

// ProcComm is the command name of the process at dir (its executable's base name, at most 15
// bytes), "" if unreadable.
func ProcComm(dir string) string {
	b, _ := os.ReadFile(filepath.Join(dir, "comm"))
	return strings.TrimSpace(string(b))
}
