// Command rusage runs the netready binary next to it as a child, exactly as the runtime would have
// run netready (same stdin, stdout, stderr, environment and exit status), and appends the child's
// resource usage to rusage.jsonl in the same directory: the benchmark's way to read peak RSS and
// CPU time of real netready processes without changing the plugin.
//
// A conflist selects it with "type": "netready-rusage" instead of "netready"; netready itself does
// not look at its type. One JSON line per run (well under PIPE_BUF, appended with O_APPEND, so
// concurrent runs do not interleave):
//
//	{"verb":"ADD","container":"…","pid":123,"exit":0,"maxrss_kb":9876,"utime_us":1200,"stime_us":800,"wall_us":10004000,"nvcsw":900,"nivcsw":12}
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// Record is one line of rusage.jsonl.
type Record struct {
	Verb      string `json:"verb"`
	Container string `json:"container"`
	PID       int    `json:"pid"`
	Exit      int    `json:"exit"`
	MaxRSSKB  int64  `json:"maxrss_kb"` // ru_maxrss: kilobytes on Linux
	UtimeUS   int64  `json:"utime_us"`
	StimeUS   int64  `json:"stime_us"`
	WallUS    int64  `json:"wall_us"` // from just before fork to just after wait
	NVCSW     int64  `json:"nvcsw"`   // voluntary context switches: how often it slept
	NIVCSW    int64  `json:"nivcsw"`  // involuntary ones: how often it was preempted
}

func main() {
	dir := filepath.Dir(os.Args[0])
	cmd := exec.Command(filepath.Join(dir, "netready"), os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// libcni kills the plugin (this wrapper) at its deadline: take netready with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	// The runtime stops a plugin with SIGTERM: pass it on, netready answers it.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	start := time.Now()
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "netready-rusage:", err)
		os.Exit(1)
	}
	go func() {
		for s := range sigs {
			cmd.Process.Signal(s)
		}
	}()
	err := cmd.Wait()
	wall := time.Since(start)
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		fmt.Fprintln(os.Stderr, "netready-rusage:", err)
		os.Exit(1)
	}

	rec := Record{
		Verb:      os.Getenv("CNI_COMMAND"),
		Container: os.Getenv("CNI_CONTAINERID"),
		PID:       cmd.ProcessState.Pid(),
		Exit:      cmd.ProcessState.ExitCode(),
		WallUS:    wall.Microseconds(),
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rec.MaxRSSKB = ru.Maxrss
		rec.UtimeUS = ru.Utime.Sec*1e6 + ru.Utime.Usec
		rec.StimeUS = ru.Stime.Sec*1e6 + ru.Stime.Usec
		rec.NVCSW, rec.NIVCSW = ru.Nvcsw, ru.Nivcsw
	}
	line, _ := json.Marshal(rec)
	if f, err := os.OpenFile(filepath.Join(dir, "rusage.jsonl"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
		f.Write(append(line, '\n'))
		f.Close()
	} else {
		fmt.Fprintln(os.Stderr, "netready-rusage:", err)
	}
	os.Exit(rec.Exit)
}
