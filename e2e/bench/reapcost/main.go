// Command reapcost measures what looking up /proc/PID/task/TID costs a process's parent when many
// such processes exit at once: the finding behind internal/threadns. It starts n copies of itself,
// which first make their lookups (or none), then block reading a pipe; closing the pipe releases
// them all at once, and it reports when each was reaped and the CPU its own reaping took.
//
//	go build -o /tmp/reapcost ./e2e/bench/reapcost
//	for m in threads task self; do /tmp/reapcost -mode $m; done
//
// Modes: threads, four locked threads and no lookup (the baseline); task, each of the four opens
// /proc/PID/task/TID/ns/net (what netns.Get does); self, each opens /proc/self/ns/net. It touches
// no network namespace, and runs as any user.
//
// With -touch MB each child also writes to that much heap before it blocks: what the memory a
// process touched costs its exit, which the kernel pays before the parent can reap it.
//
//	for mb in 0 2 8; do /tmp/reapcost -mode threads -touch $mb; done
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"
)

func main() {
	mode := flag.String("mode", "task", "what each child looks up: threads (nothing), task, self")
	n := flag.Int("n", 110, "children released at once")
	touch := flag.Int("touch", 0, "MB of heap each child writes to before it blocks")
	child := flag.Bool("child", false, "run as a child (internal)")
	flag.Parse()
	if *child {
		runChild(*mode, *touch)
		return
	}
	if err := run(*mode, *n, *touch); err != nil {
		fmt.Fprintln(os.Stderr, "reapcost:", err)
		os.Exit(1)
	}
}

// heap keeps what runChild touched reachable until the exit.
var heap []byte

// runChild makes the lookups on four threads it keeps, writes to touchMB of heap, then waits for
// EOF on stdin.
func runChild(mode string, touchMB int) {
	var ready sync.WaitGroup
	for range 4 {
		ready.Add(1)
		go func() {
			runtime.LockOSThread() // never unlocked: four distinct threads
			path := ""
			switch mode {
			case "task":
				path = fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), syscall.Gettid())
			case "self":
				path = "/proc/self/ns/net"
			}
			if path != "" {
				if f, err := os.Open(path); err == nil {
					f.Close()
				}
			}
			ready.Done()
			select {}
		}()
	}
	ready.Wait()
	heap = make([]byte, touchMB<<20)
	for i := 0; i < len(heap); i += os.Getpagesize() {
		heap[i] = 1
	}
	buf := make([]byte, 1)
	os.Stdin.Read(buf)
	os.Exit(0)
}

func run(mode string, n, touchMB int) error {
	switch mode {
	case "threads", "task", "self":
	default:
		return fmt.Errorf("unknown -mode %q: threads, task or self", mode)
	}
	if touchMB < 0 {
		return fmt.Errorf("-touch %d: a size in MB, 0 or more", touchMB)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmds := make([]*exec.Cmd, n)
	for i := range cmds {
		cmds[i] = exec.Command(self, "-child", "-mode", mode, "-touch", fmt.Sprint(touchMB))
		cmds[i].Stdin = r
		if err := cmds[i].Start(); err != nil {
			w.Close()
			for _, c := range cmds[:i] {
				c.Wait()
			}
			return err
		}
	}
	r.Close()
	reaped := make([]time.Time, n)
	var wg sync.WaitGroup
	for i, c := range cmds {
		wg.Go(func() {
			c.Wait()
			reaped[i] = time.Now()
		})
	}
	time.Sleep(1500 * time.Millisecond) // every child has made its lookups and blocks
	var before, after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	released := time.Now()
	w.Close()
	wg.Wait()
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano() - before.Utime.Nano() + after.Stime.Nano() - before.Stime.Nano())
	back := make([]float64, n)
	for i, t := range reaped {
		back[i] = float64(t.Sub(released).Microseconds()) / 1000
	}
	slices.Sort(back)
	fmt.Printf("%-8s %d children, %d MB touched each: reaped p50 %.1f, p99 %.1f ms after the release; the parent's CPU %v\n",
		mode, n, touchMB, back[n/2], back[n*99/100], cpu.Round(time.Millisecond))
	return nil
}
