package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"

	"github.com/netready/netready/e2e/testbed"
)

// blockedSettle is how long after every netready started the measuring window opens: they
// have all finished their quick round, and what is left is the steady wait.
const blockedSettle = 2 * time.Second

// blockedAddTimeout bounds one ADD of the blocked fanout: the chain's ramp for 110 pods on a
// loaded machine, the wait, and netready's exit.
const blockedAddTimeout = 3 * time.Minute

// allWaiting returns when n children named comm (netready, the no-op plugin) run at once, as
// procs reads them.
func (m *measurer) allWaiting(procs *privateProc, comm string, n int) (time.Time, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		running := len(procs.childCPU(comm))
		if running >= n {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("only %d of %d %s processes started within 2 minutes", running, n, comm)
		}
		select {
		case <-m.ctx.Done():
			return time.Time{}, m.ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// blockedRound is one round of n pods ADDed at once while fault blocks the path, which opens
// wait after the ADDs started.
type blockedRound struct {
	cpuCores    float64 // CPU of all netready processes over the window, in cores
	window      time.Duration
	packetsPerS float64   // TCP packets to the db per second over the window (remote fault only)
	openToRet   []float64 // per returned ADD: ms from the opening to its return
	failures    int
	firstErr    string
}

// blocked: the blocked fanout. blockedPods pods ADDed at once with netready (tcp probe to the db)
// while the router drops the path (remote) and again while a blackhole route on the node does
// (node-local); the path opens blockedWait after the ADDs started. While they wait, the CPU time
// of every netready process (the bench's own children of that name: the run time of their
// threads, /proc/PID/task/*/schedstat) and the router's packet counter are read at the start and
// the end of the window. Then idle_one: the same with one pod, for the CPU one waiting pod costs.
func (m *measurer) blocked(f *Figures, x *Extra) error {
	if err := m.nftCounter.install(m.ctx); err != nil {
		return err
	}
	defer m.nftCounter.remove()
	remote, err := m.blockedRound(m.blockedList, m.router, m.o.blockedPods, m.o.blockedWait)
	if err != nil {
		return err
	}
	m.progress()
	local, err := m.blockedRound(m.blockedList, m.node, m.o.blockedPods, m.o.blockedWait)
	if err != nil {
		return err
	}
	m.progress()
	floor, err := m.floorRound(m.o.blockedPods)
	if err != nil {
		return err
	}
	m.progress()
	one, err := m.idleOne(f, x)
	if err != nil {
		return err
	}
	r, l := summarize(remote.openToRet), summarize(local.openToRet)
	f.BlockedFanout = BlockedFanout{
		Pods: m.o.blockedPods, Seconds: num(m.o.blockedWait.Seconds()),
		CPUCores: num(remote.cpuCores), PacketsPerSPerTarget: num(remote.packetsPerS),
		Failures: remote.failures + local.failures + one.failures,
	}
	f.BlockedFanout.OpenToReturn.Remote = P50P99{r.P50, r.P99}
	f.BlockedFanout.OpenToReturn.Local = P50P99{l.P50, l.P99}
	x.BlockedLocalCPU, x.BlockedWindow = local.cpuCores, remote.window
	x.BlockedRemoteMax, x.BlockedLocalMax = r.Max, l.Max
	x.BlockedFloor = summarize(floor)
	f.BlockedFanout.Floor = P50P99{x.BlockedFloor.P50, x.BlockedFloor.P99}
	for _, e := range []string{remote.firstErr, local.firstErr, one.firstErr} {
		if e != "" && x.BlockedFirstErr == "" {
			x.BlockedFirstErr = e
		}
	}
	return nil
}

// idleOne: one pod blocked on the db for idleWait (the last round of blocked, and a stage of its
// own, "idleone", to be run alone and often: its single runs spread widely on a small VM).
func (m *measurer) idleOne(f *Figures, x *Extra) (blockedRound, error) {
	if err := m.nftCounter.install(m.ctx); err != nil {
		return blockedRound{}, err
	}
	defer m.nftCounter.remove()
	one, err := m.blockedRound(m.blockedList, m.router, 1, m.o.idleWait)
	if err != nil {
		return one, err
	}
	f.IdleOne = IdleOne{CPUMSPerS: num(one.cpuCores * 1000)}
	x.IdleOnePackets = one.packetsPerS
	if one.firstErr != "" && x.BlockedFirstErr == "" {
		x.BlockedFirstErr = one.firstErr
	}
	return one, nil
}

func (m *measurer) blockedRound(list *libcni.NetworkConfigList, fault *testbed.Fault, n int, wait time.Duration) (blockedRound, error) {
	var res blockedRound
	pods, err := m.newPods(n)
	defer removePods(pods)
	if err != nil {
		return res, err
	}
	if err := fault.Block(); err != nil {
		return res, err
	}
	back := make([]time.Time, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(m.ctx, blockedAddTimeout)
			defer cancel()
			_, errs[i] = m.b.Add(ctx, list, p)
			back[i] = time.Now()
		})
	}
	// The chain before netready takes a while for n pods at once (host-local's lock, a loaded
	// machine): the wait counts from when every netready is running.
	procs := newPrivateProc()
	defer procs.close()
	waiting, err := m.allWaiting(procs, testbed.Netready, n)
	if err != nil {
		fault.Unblock()
		wg.Wait()
		return res, err
	}
	opened := fault.OpenAt(waiting.Add(wait))
	prof := profileBurst(fault.String(), waiting.Add(wait))
	windowEnd := waiting.Add(wait - 250*time.Millisecond)
	time.Sleep(time.Until(waiting.Add(min(blockedSettle, wait/4))))
	cpu1 := procs.childCPU(testbed.Netready)
	c1, t1, cerr1 := m.nftCounter.read(m.ctx)
	time.Sleep(time.Until(windowEnd))
	cpu2 := procs.childCPU(testbed.Netready)
	procs.close() // before the opening: see privateProc
	if os.Getenv("NR_BENCH_DEBUG") != "" {
		fmt.Fprintf(os.Stderr, "netready processes at the window's start and end: %d, %d; %v of CPU\n", len(cpu1), len(cpu2), cpuDelta(cpu1, cpu2))
	}
	c2, t2, cerr2 := m.nftCounter.read(m.ctx)
	wg.Wait()
	prof()
	o, oerr := waitOpened(opened)
	delErrs := make([]error, n)
	parallel(n, 8, func(i int) { delErrs[i] = m.delAndRemove(list, pods[i]) })
	if err := errors.Join(cerr1, cerr2, oerr, errors.Join(delErrs...)); err != nil {
		return res, err
	}
	res.window = t2.Sub(t1)
	res.cpuCores = float64(cpuDelta(cpu1, cpu2)) / float64(res.window)
	res.packetsPerS = float64(c2["tcp_db"]-c1["tcp_db"]) / res.window.Seconds()
	for i, err := range errs {
		if err != nil {
			res.failures++
			if res.firstErr == "" {
				res.firstErr = err.Error()
			}
			continue
		}
		res.openToRet = append(res.openToRet, ms(back[i].Sub(o.At)))
	}
	if os.Getenv("NR_BENCH_DEBUG") != "" {
		sorted := slices.Sorted(slices.Values(res.openToRet))
		fmt.Fprintf(os.Stderr, "opening → return, ms, sorted: %.0f\n", sorted)
		// Where it went: the gate's ready moment (its start, from the line's time less total_ms,
		// plus the last condition's after_ms), its log line, the return; all from the opening.
		if recs, err := readLog(m.logFile); err == nil {
			var ready, line, exit, attempts []float64
			for i, p := range pods {
				r, ok := recs[p.ContainerID]
				if !ok || errs[i] != nil {
					continue
				}
				n := 0
				for _, c := range r.Conditions {
					if strings.HasPrefix(c.Name, "tcp://") {
						n += c.Attempts
					}
				}
				attempts = append(attempts, float64(n))
				start := r.Time.Add(-time.Duration(r.TotalMS * float64(time.Millisecond)))
				last := 0.0
				for _, c := range r.Conditions {
					last = max(last, c.AfterMS)
				}
				ready = append(ready, ms(start.Add(time.Duration(last*float64(time.Millisecond))).Sub(o.At)))
				line = append(line, ms(r.Time.Sub(o.At)))
				exit = append(exit, ms(back[i].Sub(r.Time)))
				if back[i].Sub(o.At) > time.Second {
					fmt.Fprintf(os.Stderr, "slow: %s returned %v after the opening: %+v, notes %q\n",
						p.Name, back[i].Sub(o.At).Round(time.Millisecond), r.Conditions, r.Notes)
				}
			}
			for _, x := range []struct {
				what string
				v    []float64
			}{{"opening → gate ready", ready}, {"opening → log line", line}, {"log line → return", exit}, {"tcp attempts of each ADD", attempts}} {
				fmt.Fprintf(os.Stderr, "%s, ms, sorted: %.0f\n", x.what, slices.Sorted(slices.Values(x.v)))
			}
		}
	}
	return res, nil
}

// floorRound measures what n chained Go plugins held at once cost to return together on this
// machine: the floor under netready's return after an opening. n ADDs run a list of the no-op
// plugin (e2e/bench/noop) alone, each reading a FIFO that the bench holds open; once every one
// runs, the bench closes its end, which releases all at once, and each ADD's return is timed
// from that moment. Nothing probes, logs or shares: only the wake-up, the print, the exit of n
// Go processes, and libcni reaping them. (The plugins before netready in the chain have
// returned by then, so they are left out: no netns or veth is made.)
func (m *measurer) floorRound(n int) ([]float64, error) {
	fifo := filepath.Join(m.b.Dir, "floor.fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		return nil, err
	}
	defer os.Remove(fifo)
	// Opened read-write, the FIFO has a writer before any reader comes: their open does not
	// block, their read does, until this end is closed.
	w, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer w.Close()
	list, err := m.b.ConfList([]byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"floor","plugins":[{"type":%q,"waitFIFO":%q}]}`, noopType, fifo)))
	if err != nil {
		return nil, err
	}
	back := make([]time.Time, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		p := *m.resident // its netns, which the no-op plugin does not enter
		p.Name, p.ContainerID = fmt.Sprintf("floor-%d", i), fmt.Sprintf("floor%059d", i)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(m.ctx, blockedAddTimeout)
			defer cancel()
			_, errs[i] = m.b.AddRaw(ctx, list, &p)
			back[i] = time.Now()
		})
	}
	procs := newPrivateProc()
	_, err = m.allWaiting(procs, noopType, n)
	procs.close()
	if err != nil {
		w.Close()
		wg.Wait()
		return nil, fmt.Errorf("floor: %w", err)
	}
	time.Sleep(blockedSettle) // as the blocked rounds: every process settled in its wait
	prof := profileBurst("floor", time.Now().Add(5*time.Millisecond))
	time.Sleep(5 * time.Millisecond)
	released := time.Now()
	w.Close()
	wg.Wait()
	prof()
	var out []float64
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("floor: ADD: %w", err)
		}
		out = append(out, ms(back[i].Sub(released)))
	}
	return out, nil
}

// cpuDelta is the CPU time the processes spent between two readings: a process in both counts
// its difference, one that started between them all of its time (none here: the window opens
// after every ADD started); one that ended between them is not counted (none: ADDs return
// only after the opening).
func cpuDelta(before, after map[int]time.Duration) time.Duration {
	var d time.Duration
	for pid, t := range after {
		d += t - before[pid]
	}
	return d
}

// childCPU is the CPU time of every process named comm that is a child of this one (libcni runs
// the plugins as its children), by pid. Other netready processes on the machine (other tests)
// are not counted.
//
// It is the sum of its threads' run time in /proc/PID/task/TID/schedstat, in nanoseconds:
// utime+stime in /proc/PID/stat count whole clock ticks, 10 ms, which for one waiting process
// over a 7.75 s window is a step of 1.3 ms/s, a quarter of idle one's goal. A thread that exits
// within the window takes its time with it; a waiting netready starts and ends none. Without
// schedstat (a kernel without CONFIG_SCHED_INFO) it falls back to the ticks.
func (p *privateProc) childCPU(comm string) map[int]time.Duration {
	self := os.Getpid()
	out := map[int]time.Duration{}
	p.run(func() {
		testbed.Pids(func(pid int, dir string) bool {
			data, err := os.ReadFile(filepath.Join(dir, "stat"))
			if err != nil {
				return false // exited meanwhile
			}
			if c, ppid, cpu, ok := parseStat(data); ok && ppid == self && c == comm {
				if run, ok := threadsRunTime(dir); ok {
					cpu = run
				}
				out[pid] = cpu
			}
			return false
		})
	})
	return out
}

// threadsRunTime sums the first field of schedstat (time on the CPU, ns) over the process's
// threads.
func threadsRunTime(dir string) (time.Duration, bool) {
	tasks, err := os.ReadDir(filepath.Join(dir, "task"))
	if err != nil || len(tasks) == 0 {
		return 0, false
	}
	var sum time.Duration
	for _, t := range tasks {
		data, err := os.ReadFile(filepath.Join(dir, "task", t.Name(), "schedstat"))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // the thread exited meanwhile
			}
			return 0, false
		}
		f := bytes.Fields(data)
		if len(f) == 0 {
			return 0, false
		}
		ns, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, false
		}
		sum += time.Duration(ns)
	}
	return sum, true
}

// clockTick is USER_HZ, 100 on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// parseStat reads comm, ppid and utime+stime from /proc/PID/stat. comm is in parentheses and
// may hold spaces or parentheses itself: the fields after it follow the last ')'.
func parseStat(data []byte) (comm string, ppid int, cpu time.Duration, ok bool) {
	open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return "", 0, 0, false
	}
	comm = string(data[open+1 : end])
	sc := bufio.NewScanner(bytes.NewReader(data[end+1:]))
	sc.Split(bufio.ScanWords)
	var fields []string
	for sc.Scan() {
		fields = append(fields, sc.Text())
	}
	// After comm: state(3) ppid(4) … utime(14) stime(15), numbered from 1 as in proc(5).
	if len(fields) < 13 {
		return "", 0, 0, false
	}
	ppid, err1 := strconv.Atoi(fields[1])
	ut, err2 := strconv.ParseInt(fields[11], 10, 64)
	st, err3 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return "", 0, 0, false
	}
	return comm, ppid, time.Duration(ut+st) * clockTick, true
}

// noopType is the bench's minimal chained plugin (e2e/bench/noop), for overhead_vs_noop.
const noopType = "netready-noop"

// profileBurst lets `perf record --control fifo:CTL -D -1` sample only the burst after an
// opening: with NR_BENCH_PERF_CTL=CTL (perf's control FIFO) it writes "enable" to it 5 ms before
// at and "disable" when the returned func is called (every ADD returned). NR_BENCH_PERF_ROUND,
// if set, names the one round to sample: the fault's name ("nft drop in router", "blackhole
// route on node") or "floor". Without NR_BENCH_PERF_CTL, nothing.
//
//	mkfifo /tmp/ctl && perf record -a -g --control fifo:/tmp/ctl -D -1 -o burst.data &
//	NR_BENCH_PERF_CTL=/tmp/ctl bench -only blocked
func profileBurst(round string, at time.Time) (stop func()) {
	path := os.Getenv("NR_BENCH_PERF_CTL")
	if only := os.Getenv("NR_BENCH_PERF_ROUND"); path == "" || only != "" && only != round {
		return func() {}
	}
	// Non-blocking: with no perf reading the FIFO the open fails (ENXIO) instead of hanging.
	ctl, err := os.OpenFile(path, os.O_WRONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "NR_BENCH_PERF_CTL: %v (no perf record --control reading it?): not sampled\n", err)
		return func() {}
	}
	t := time.AfterFunc(time.Until(at.Add(-5*time.Millisecond)), func() { ctl.WriteString("enable\n") })
	return func() {
		if t.Stop() { // the burst never came: nothing to record
			ctl.Close()
			return
		}
		ctl.WriteString("disable\n")
		ctl.Close()
	}
}

// privateProc reads /proc through a procfs instance of its own, mounted over /proc in a mount
// namespace that only one locked thread has; close ends the thread, and the namespace and that
// procfs end with it.
//
// The bench reads every waiting netready's /proc/PID/task/TID/schedstat, and each file it looks
// up stays in the kernel's dentry cache while the process lives. Reaping a process invalidates
// its /proc dentries (release_task → proc_invalidate_siblings_dcache), under locks that 110
// processes exiting at once contend for: `perf record -a` over the second after an opening
// put a fifth of all samples there, in the bench's waitid and the exiting threads, a cost that
// no runtime pays for a CNI plugin it never looked at. Dropping the instance before the opening
// drops its dentries, so the returns measure netready and not the bench. Without a private
// procfs (no CAP_SYS_ADMIN) it reads the shared /proc, and says so once.
type privateProc struct {
	do   chan func()
	done chan struct{}
	once sync.Once
}

func newPrivateProc() *privateProc {
	p := &privateProc{do: make(chan func()), done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		defer close(p.done)
		ready <- mountPrivateProc()
		for f := range p.do {
			f()
		}
	}()
	if err := <-ready; err != nil {
		privateProcWarn.Do(func() {
			fmt.Fprintf(os.Stderr, "bench: reading the shared /proc (its dentries then stay until each netready is reaped): %v\n", err)
		})
	}
	return p
}

var privateProcWarn sync.Once

// mountPrivateProc gives the calling thread a mount namespace of its own with a new procfs over
// /proc. On an error the thread may be half-way; it is never reused (its goroutine stays locked).
func mountPrivateProc() error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare(CLONE_NEWNS): %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private in the new mount namespace: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting procfs: %w", err)
	}
	return nil
}

// run runs f on the reader's thread and returns when it is done.
func (p *privateProc) run(f func()) {
	ran := make(chan struct{})
	p.do <- func() { defer close(ran); f() }
	<-ran
}

// close ends the reader's thread; it is idempotent. Its procfs goes with the thread's mount
// namespace, when the kernel tears the thread down, moments after close returns.
func (p *privateProc) close() {
	p.once.Do(func() { close(p.do) })
	<-p.done
}
