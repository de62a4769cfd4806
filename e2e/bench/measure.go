package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/netready/netready/e2e/testbed"
)

// What is measured, exactly.
//
// Every ADD and DEL goes through libcni from the node netns (testbed.Bed.Add), with K3s's chain
// (flannel → bridge + host-local, portmap, bandwidth) at cniVersion 1.0.0, with or without netready
// last. netready's object is {"probes": [ONE PROBE], "timeout": …, "logFile": …}: gateway and
// defaultRoute at their defaults (on), interval 10ms → maxInterval 40ms, attemptTimeout 1s.
// A time "after the opening" is a reading of the clock minus Opened.At, the moment the testbed saw
// the path open: the nf_tables commit notification for the router's drop rule, the return of the
// netlink call for the node's route.
const (
	// appConnectTimeout bounds every connection attempt of the alternatives: the init-container
	// loop is `until nc -z -w 1 DB 5432; do sleep 1; done`, the app's retry uses the same 1 s.
	// The kernel retransmits a dropped SYN after its initial RTO of 1 s as well, so an attempt
	// in progress when the path opens may still connect at its very end, as nc's would.
	appConnectTimeout = time.Second
	initSleep         = time.Second // between failed attempts of the init loop
	initMaxAttempts   = 30          // a bound, far above what an opening ≤ 1.5 s needs
	appAttempts       = 3           // the app's retry: 3 attempts whose starts are 1 s apart
	appSpacing        = time.Second
	addTimeout        = 60 * time.Second // any one ADD or DEL, far above what any should take
	detectTimeout     = "10s"            // netready's timeout in the detect runs: openings are ≤ 1.5 s
	rusageType        = "netready-rusage"
	routerCounters    = "netready_bench" // nft table of packet counters in the router netns
)

// measurer holds the bed, the lists and the faults shared by the figures.
type measurer struct {
	ctx context.Context
	b   *testbed.Bed
	o   options
	out io.Writer

	logFile    string // netready's log (total_ms of each run)
	rusageFile string // the wrapper's records (peak RSS, CPU time)

	plain       *libcni.NetworkConfigList // K3s's chain
	tcp, icmp   *libcni.NetworkConfigList // + netready, one probe to the db
	idleTCP     *libcni.NetworkConfigList // + netready through the rusage wrapper, long timeout
	idleICMP    *libcni.NetworkConfigList
	fanoutRSS   *libcni.NetworkConfigList // tcp through the rusage wrapper
	noop        *libcni.NetworkConfigList // the no-op chained plugin in netready's place
	blockedList *libcni.NetworkConfigList // tcp, a timeout past the blocked fanout's wait
	router      *testbed.Fault            // nft drop in the router: a remote cause
	node        *testbed.Fault            // blackhole route on the node: a node-local cause
	openings    []time.Duration           // when the path opens after ADD starts, one per trial
	nftCounter  nftCounters
	resident    *testbed.Pod // on cni0 for the whole run (Bed.Resident)
}

func newMeasurer(ctx context.Context, b *testbed.Bed, o options, out io.Writer) (*measurer, error) {
	m := &measurer{
		ctx: ctx, b: b, o: o, out: out,
		logFile:    filepath.Join(b.Dir, "netready.log"),
		rusageFile: filepath.Join(b.BinDir, "rusage.jsonl"),
		nftCounter: nftCounters{ns: b.Router, table: routerCounters},
	}
	tcpProbe, icmpProbe := testbed.ProbeDB, "icmp://"+testbed.DBAddr.String()
	idleTimeout := (o.idleWait + 20*time.Second).String()
	var err error
	for _, l := range []struct {
		dst  **libcni.NetworkConfigList
		conf string
	}{
		{&m.plain, ""},
		{&m.tcp, m.netready("netready", tcpProbe, detectTimeout)},
		{&m.icmp, m.netready("netready", icmpProbe, detectTimeout)},
		{&m.idleTCP, m.netready(rusageType, tcpProbe, idleTimeout)},
		{&m.idleICMP, m.netready(rusageType, icmpProbe, idleTimeout)},
		{&m.fanoutRSS, m.netready(rusageType, tcpProbe, detectTimeout)},
		{&m.noop, fmt.Sprintf(`{"type":%q}`, noopType)},
		{&m.blockedList, m.netready("netready", tcpProbe, "110s")},
	} {
		raw := testbed.K3sConflist("1.0.0")
		if l.conf != "" {
			raw = testbed.K3sConflist("1.0.0", l.conf)
		}
		if *l.dst, err = b.ConfList(raw); err != nil {
			return nil, err
		}
	}
	// Both faults install themselves; the path stays open until a trial blocks it again.
	if m.router, err = b.BlockRouter(ctx); err != nil {
		return nil, err
	}
	if m.node, err = b.BlackholeNode(ctx); err != nil {
		return nil, err
	}
	for _, f := range []*testbed.Fault{m.router, m.node} {
		if _, err := f.Unblock(); err != nil {
			return nil, err
		}
	}
	// cni0 keeps one pod for the bench's whole run, as on a live node: see Resident.
	if m.resident, err = b.Resident(ctx); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(o.randSeed, 0x6e65747265616479))
	for range o.detectTrials {
		m.openings = append(m.openings, o.openMin+time.Duration(rng.Int64N(int64(o.openMax-o.openMin)+1)))
	}
	return m, nil
}

// netready is netready's object in the chain, under type typ (netready or its rusage wrapper).
func (m *measurer) netready(typ, probe, timeout string) string {
	return fmt.Sprintf(`{"type":%q,"probes":[%q],"timeout":%q,"logFile":%q}`, typ, probe, timeout, m.logFile)
}

func (m *measurer) progress() { fmt.Fprint(m.out, ".") }

// newPod makes a pod netns; the caller removes it.
func (m *measurer) newPod() (*testbed.Pod, error) { return m.b.NewPod(m.ctx) }

// newPods makes n pods, 8 at a time. The caller removes them (removePods), also on an error:
// the slice holds those that were made.
func (m *measurer) newPods(n int) ([]*testbed.Pod, error) {
	pods := make([]*testbed.Pod, n)
	errs := make([]error, n)
	parallel(n, 8, func(i int) { pods[i], errs[i] = m.newPod() })
	return pods, errors.Join(errs...)
}

// removePods removes the pods that newPods made.
func removePods(pods []*testbed.Pod) {
	for _, p := range pods {
		if p != nil {
			p.Remove()
		}
	}
}

// add runs ADD of list for pod, bounded by addTimeout.
func (m *measurer) add(list *libcni.NetworkConfigList, pod *testbed.Pod) error {
	ctx, cancel := context.WithTimeout(m.ctx, addTimeout)
	defer cancel()
	_, err := m.b.Add(ctx, list, pod)
	return err
}

// delAndRemove runs DEL (the runtime always does, also after a failed ADD) and removes the netns.
func (m *measurer) delAndRemove(list *libcni.NetworkConfigList, pod *testbed.Pod) error {
	ctx, cancel := context.WithTimeout(m.ctx, addTimeout)
	defer cancel()
	return errors.Join(m.b.Del(ctx, list, pod), pod.Remove())
}

// added is one timed ADD: wall time from the call to libcni to its return, and the CPU time of
// the plugin processes it ran.
type added struct {
	wall, cpu time.Duration
	id        string // the pod's container id
}

// timedAdd is one ADD of list into a fresh pod, then DEL.
func (m *measurer) timedAdd(list *libcni.NetworkConfigList) (added, error) {
	pod, err := m.newPod()
	if err != nil {
		return added{}, err
	}
	defer pod.Remove()
	cpu := childrenCPU()
	start := time.Now()
	err = m.add(list, pod)
	a := added{wall: time.Since(start), cpu: childrenCPU() - cpu, id: pod.ContainerID}
	if err != nil {
		return a, errors.Join(fmt.Errorf("ADD on a ready network: %w", err), m.delAndRemove(list, pod))
	}
	return a, m.delAndRemove(list, pod)
}

// overhead: ADD of K3s's chain with netready (network ready) against without, in pairs whose
// order alternates; ratio is the median of the pairs' ratios. netready's own time is the
// total_ms of its log records for those ADDs: from its main() to its log line.
func (m *measurer) overhead(f *Figures, x *Extra) error {
	lists := []*libcni.NetworkConfigList{m.plain, m.tcp, m.noop}
	for _, l := range lists { // the first ADD creates cni0
		if _, err := m.timedAdd(l); err != nil {
			return err
		}
	}
	var with, without, noop, cpuWith, cpuWithout, cpuNoop, ratios, noopRatios []float64
	var ids []string
	// Each run ADDs without, with and with the no-op plugin, in an order that rotates (and
	// reverses every other run), so that no arm always runs first or after the same one.
	orders := [][]int{{0, 1, 2}, {2, 1, 0}, {1, 2, 0}, {0, 2, 1}, {2, 0, 1}, {1, 0, 2}}
	for i := range m.o.overheadPairs {
		var pair [3]added // without, with, noop
		for _, k := range orders[i%len(orders)] {
			a, err := m.timedAdd(lists[k])
			if err != nil {
				return err
			}
			pair[k] = a
		}
		noop = append(noop, ms(pair[2].wall))
		cpuNoop = append(cpuNoop, ms(pair[2].cpu))
		noopRatios = append(noopRatios, float64(pair[1].wall)/float64(pair[2].wall))
		ids = append(ids, pair[1].id)
		without = append(without, ms(pair[0].wall))
		with = append(with, ms(pair[1].wall))
		cpuWithout = append(cpuWithout, ms(pair[0].cpu))
		cpuWith = append(cpuWith, ms(pair[1].cpu))
		ratios = append(ratios, float64(pair[1].wall)/float64(pair[0].wall))
		if i%10 == 9 {
			m.progress()
		}
	}
	recs, err := readLog(m.logFile)
	if err != nil {
		return err
	}
	var own []float64
	for _, id := range ids {
		if r, ok := recs[id]; ok {
			own = append(own, r.TotalMS)
		}
	}
	if len(own) != len(ids) {
		return fmt.Errorf("netready's log %s has %d of the %d ADD records expected", m.logFile, len(own), len(ids))
	}
	f.Overhead = Overhead{Ratio: num(median(ratios)), NetreadyMSP50: num(median(own)), Pairs: len(ratios)}
	x.AddWithout, x.AddWith = summarize(without), summarize(with)
	x.AddCPUWithout, x.AddCPUWith = summarize(cpuWithout), summarize(cpuWith)
	x.NetreadyOwn = summarize(own)
	x.AddNoop, x.AddNoopCPU = summarize(noop), summarize(cpuNoop)
	f.OverheadVsNoop = OverheadVsNoop{Ratio: num(median(noopRatios)), P50MSWith: num(median(with)), P50MSNoop: num(median(noop))}
	return nil
}

// A method is one way a pod gets to its first working connection, measured at one opening.
type method int

const (
	gatedTCP   method = iota // netready, tcp probe, router drop
	gatedICMP                // netready, icmp probe, router drop
	gatedLocal               // netready, tcp probe, blackhole route on the node
	ungated                  // no netready: the init loop and the app retry, in two pods at once
	nMethods
)

// detect runs every method at every opening. The order of the methods rotates from one opening
// to the next, so none always runs first.
func (m *measurer) detect(f *Figures, x *Extra) error {
	var tcp, icmp, local, initc, app []float64
	var returns [3][]returned
	for i, d := range m.openings {
		for j := range nMethods {
			var err error
			switch method((i + int(j)) % int(nMethods)) {
			case gatedTCP:
				err = m.gatedTrial(m.tcp, m.router, d, &tcp, &returns[0], &x.DetectFailed[0])
			case gatedICMP:
				err = m.gatedTrial(m.icmp, m.router, d, &icmp, &returns[1], &x.DetectFailed[1])
			case gatedLocal:
				err = m.gatedTrial(m.tcp, m.node, d, &local, &returns[2], &x.DetectFailed[2])
			case ungated:
				err = m.ungatedTrial(d, &initc, &app, x)
			}
			if err != nil {
				return err
			}
		}
		if i%5 == 4 {
			m.progress()
		}
	}
	f.Detect.TCP, f.Detect.ICMP, f.Detect.Local = detectFig(tcp), detectFig(icmp), detectFig(local)
	// Where the time after the opening went: until netready wrote its log line (the gate saw
	// the answer, then cleaned up), and from there until libcni returned (netready's exit, the
	// runtime reading its result).
	recs, err := readLog(m.logFile)
	if err != nil {
		return err
	}
	for k, rs := range returns {
		var tail []float64
		for _, r := range rs {
			if rec, ok := recs[r.id]; ok && !rec.Time.IsZero() {
				tail = append(tail, ms(r.at.Sub(rec.Time)))
			}
		}
		x.DetectTail[k] = summarize(tail)
	}
	s := summarize(initc)
	f.InitContainer = InitContainer{P50: s.P50, P99: s.P99, Trials: s.N}
	f.AppRetry = AppRetry{SuccessRate: num(float64(len(app)) / float64(len(m.openings))), P50: summarize(app).P50}
	x.Init, x.App = s, summarize(app)
	return nil
}

// returned is when the ADD into the pod of container id returned.
type returned struct {
	id string
	at time.Time
}

// gatedTrial: block, start ADD, open the path d after ADD started, note how long after the
// opening ADD returned. An ADD that fails is counted in failed, not measured.
func (m *measurer) gatedTrial(list *libcni.NetworkConfigList, fault *testbed.Fault, d time.Duration, got *[]float64, rets *[]returned, failed *int) error {
	pod, err := m.newPod()
	if err != nil {
		return err
	}
	defer pod.Remove()
	if err := fault.Block(); err != nil {
		return err
	}
	start := time.Now()
	opened := fault.OpenAt(start.Add(d))
	addErr := m.add(list, pod)
	back := time.Now()
	o, err := waitOpened(opened)
	if err != nil {
		return err
	}
	if err := m.delAndRemove(list, pod); err != nil {
		return err
	}
	if addErr != nil {
		*failed++
		fmt.Fprintf(m.out, "\n  ADD failed (path opened %v after ADD started): %v\n", d, addErr)
		return nil
	}
	*got = append(*got, ms(back.Sub(o.At)))
	*rets = append(*rets, returned{pod.ContainerID, back})
	return nil
}

// ungatedTrial: two pods, ADDed without netready at the same moment, the path opening d after
// that; in one the init-container loop runs right after its ADD, in the other the app's retry.
// Each is measured from the opening to its first successful connection.
func (m *measurer) ungatedTrial(d time.Duration, initc, app *[]float64, x *Extra) error {
	podInit, err := m.newPod()
	if err != nil {
		return err
	}
	defer podInit.Remove()
	podApp, err := m.newPod()
	if err != nil {
		return err
	}
	defer podApp.Remove()
	if err := m.router.Block(); err != nil {
		return err
	}
	start := time.Now()
	opened := m.router.OpenAt(start.Add(d))
	var initOK, appOK time.Time
	var initErr, appErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		if initErr = m.add(m.plain, podInit); initErr == nil {
			initOK, initErr = initLoop(m.ctx, podInit)
		}
	})
	wg.Go(func() {
		if appErr = m.add(m.plain, podApp); appErr == nil {
			appOK = appRetry(m.ctx, podApp)
		}
	})
	wg.Wait()
	o, err := waitOpened(opened)
	if err != nil {
		return err
	}
	if err := errors.Join(initErr, appErr, m.delAndRemove(m.plain, podInit), m.delAndRemove(m.plain, podApp)); err != nil {
		return err
	}
	*initc = append(*initc, ms(initOK.Sub(o.At)))
	if !appOK.IsZero() {
		*app = append(*app, ms(appOK.Sub(o.At)))
	}
	return nil
}

// initLoop is the seed's init container, `until nc -z -w 1 DB 5432; do sleep 1; done`: a TCP
// connection from a fresh socket in the pod netns with a 1 s timeout, 1 s of sleep after each
// failure. It returns when the first connection was established.
func initLoop(ctx context.Context, pod *testbed.Pod) (time.Time, error) {
	var last error
	for range initMaxAttempts {
		if at, err := connectOnce(ctx, pod); err == nil {
			return at, nil
		} else {
			last = err
		}
		select {
		case <-time.After(initSleep):
		case <-ctx.Done():
			return time.Time{}, context.Cause(ctx)
		}
	}
	return time.Time{}, fmt.Errorf("init loop: no connection in %d attempts: %w", initMaxAttempts, last)
}

// appRetry is the seed app's retry: 3 attempts whose starts are 1 s apart (each bounded by 1 s, so
// one that times out is followed at once by the next, one that fails fast by a sleep), the first
// right after ADD returned. It returns when the connection was established, or the zero time when
// all 3 failed: the app gives up.
func appRetry(ctx context.Context, pod *testbed.Pod) time.Time {
	start := time.Now()
	for k := range appAttempts {
		select {
		case <-time.After(time.Until(start.Add(time.Duration(k) * appSpacing))):
		case <-ctx.Done():
			return time.Time{}
		}
		if at, err := connectOnce(ctx, pod); err == nil {
			return at
		}
	}
	return time.Time{}
}

// connectOnce connects to the db from a fresh socket in the pod netns, as an app or nc does, and
// returns when the connection was established.
func connectOnce(ctx context.Context, pod *testbed.Pod) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, appConnectTimeout)
	defer cancel()
	c, err := pod.Dial(ctx, "tcp", testbed.DBTCP.String())
	at := time.Now()
	if err != nil {
		return time.Time{}, err
	}
	c.Close()
	return at, nil
}

func waitOpened(opened <-chan testbed.Opened) (testbed.Opened, error) {
	o, ok := <-opened
	if !ok {
		return o, errors.New("the bed closed before the path opened")
	}
	return o, o.Err
}

// fanout: all pods ADDed at once on a ready network, with netready and without, in pairs whose
// order alternates; wall time from the first ADD call to the last return. A last round runs
// netready through the rusage wrapper, for the peak RSS of each netready process (the wrapper
// costs an exec, so that round is not timed).
func (m *measurer) fanout(f *Figures, x *Extra) error {
	// A few ADDs one at a time through the wrapper first: what one netready process costs alone.
	var alone []string
	for range 5 {
		a, err := m.timedAdd(m.fanoutRSS)
		if err != nil {
			return err
		}
		alone = append(alone, a.id)
	}
	var ratios []float64
	failures := 0
	for i := range m.o.fanoutPairs {
		var pair [2]time.Duration
		order := []int{0, 1}
		if i%2 == 1 {
			order = []int{1, 0}
		}
		for _, k := range order {
			list := m.plain
			if k == 1 {
				list = m.tcp
			}
			wall, cpu, failed, _, err := m.fanoutRound(list, x)
			if err != nil {
				return err
			}
			pair[k] = wall
			if k == 1 {
				x.FanoutCPUWith = append(x.FanoutCPUWith, ms(cpu))
			} else {
				x.FanoutCPUWithout = append(x.FanoutCPUWithout, ms(cpu))
			}
			if k == 1 {
				failures += failed
			} else {
				x.FanoutFailedWithout += failed
			}
			m.progress()
		}
		x.FanoutWithout = append(x.FanoutWithout, ms(pair[0]))
		x.FanoutWith = append(x.FanoutWith, ms(pair[1]))
		ratios = append(ratios, float64(pair[1])/float64(pair[0]))
	}
	_, _, failed, ids, err := m.fanoutRound(m.fanoutRSS, x)
	if err != nil {
		return err
	}
	failures += failed
	recs, err := readRusage(m.rusageFile)
	if err != nil {
		return err
	}
	var peak int64
	var cpu, wall, sleeps []float64
	seen := 0
	for _, id := range ids {
		if r, ok := recs[id]; ok {
			seen++
			peak = max(peak, r.MaxRSSKB)
			cpu = append(cpu, r.cpuMS())
			wall = append(wall, float64(r.WallUS)/1000)
			sleeps = append(sleeps, float64(r.NVCSW))
		}
	}
	x.FanoutNetreadyCPU, x.FanoutNetreadyWall, x.FanoutNetreadySleeps = summarize(cpu), summarize(wall), summarize(sleeps)
	cpu, wall, sleeps = nil, nil, nil
	for _, id := range alone {
		if r, ok := recs[id]; ok {
			cpu = append(cpu, r.cpuMS())
			wall = append(wall, float64(r.WallUS)/1000)
			sleeps = append(sleeps, float64(r.NVCSW))
		}
	}
	x.AloneNetreadyCPU, x.AloneNetreadyWall, x.AloneNetreadySleeps = summarize(cpu), summarize(wall), summarize(sleeps)
	if seen != len(ids) {
		return fmt.Errorf("the rusage wrapper recorded %d of %d netready ADDs", seen, len(ids))
	}
	f.Fanout = Fanout{Pods: m.o.fanoutPods, Ratio: num(median(ratios)), Failures: failures, PeakRSSKB: peak}
	return nil
}

// fanoutRound creates the pods, ADDs them all at once, DELs and removes them. It returns the
// wall time of the ADDs, the CPU time of the plugin processes they ran, how many failed and the
// pods' container ids. A failed ADD is counted, not returned: err is for the bench's own failures.
func (m *measurer) fanoutRound(list *libcni.NetworkConfigList, x *Extra) (time.Duration, time.Duration, int, []string, error) {
	n := m.o.fanoutPods
	pods, err := m.newPods(n)
	defer removePods(pods)
	if err != nil {
		return 0, 0, 0, nil, err
	}
	cpu := childrenCPU()
	start := time.Now()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Go(func() { errs[i] = m.add(list, p) })
	}
	wg.Wait()
	wall := time.Since(start)
	cpu = childrenCPU() - cpu
	failed := 0
	ids := make([]string, n)
	for i, err := range errs {
		ids[i] = pods[i].ContainerID
		if err != nil {
			failed++
			if x.FanoutFirstErr == "" {
				x.FanoutFirstErr = err.Error()
			}
		}
	}
	delErrs := make([]error, n)
	parallel(n, 8, func(i int) { delErrs[i] = m.delAndRemove(list, pods[i]) })
	return wall, cpu, failed, ids, errors.Join(delErrs...)
}

// parallel runs fn(0..n-1) with at most width at once.
func parallel(n, width int, fn func(i int)) {
	sem := make(chan struct{}, width)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(i)
		})
	}
	wg.Wait()
}

// idleAndRate: two pods, one gated on the db's tcp port and one on its icmp echo, ADDed at once
// while the router drops the path, which opens idleWait later. Their netready processes run
// through the rusage wrapper: CPU time (utime+stime) over the process's wall time. Counters in
// the router's forward hook, ahead of the drop, count the pods' packets to each target between
// 1 s after ADD started and shortly before the opening: the steady state of the schedule.
func (m *measurer) idleAndRate(f *Figures, x *Extra) error {
	if err := m.nftCounter.install(m.ctx); err != nil {
		return err
	}
	defer m.nftCounter.remove()
	podTCP, err := m.newPod()
	if err != nil {
		return err
	}
	defer podTCP.Remove()
	podICMP, err := m.newPod()
	if err != nil {
		return err
	}
	defer podICMP.Remove()
	if err := m.router.Block(); err != nil {
		return err
	}
	start := time.Now()
	opened := m.router.OpenAt(start.Add(m.o.idleWait))
	var tcpErr, icmpErr error
	var wg sync.WaitGroup
	wg.Go(func() { tcpErr = m.add(m.idleTCP, podTCP) })
	wg.Go(func() { icmpErr = m.add(m.idleICMP, podICMP) })

	windowEnd := start.Add(m.o.idleWait - 250*time.Millisecond)
	time.Sleep(time.Until(start.Add(time.Second)))
	c1, t1, cerr1 := m.nftCounter.read(m.ctx)
	time.Sleep(time.Until(windowEnd))
	c2, t2, cerr2 := m.nftCounter.read(m.ctx)
	wg.Wait()
	_, oerr := waitOpened(opened)
	if err := errors.Join(cerr1, cerr2, oerr, tcpErr, icmpErr,
		m.delAndRemove(m.idleTCP, podTCP), m.delAndRemove(m.idleICMP, podICMP)); err != nil {
		return err
	}
	window := t2.Sub(t1).Seconds()
	x.RateTCP = float64(c2["tcp_db"]-c1["tcp_db"]) / window
	x.RateICMP = float64(c2["icmp_db"]-c1["icmp_db"]) / window
	x.RateWindow = t2.Sub(t1)

	recs, err := readRusage(m.rusageFile)
	if err != nil {
		return err
	}
	cpuPerS := func(pod *testbed.Pod) (float64, rusageRecord, error) {
		r, ok := recs[pod.ContainerID]
		if !ok {
			return 0, r, fmt.Errorf("no rusage record of netready's ADD for %s", pod.Name)
		}
		return float64(r.UtimeUS+r.StimeUS) / 1000 / (float64(r.WallUS) / 1e6), r, nil
	}
	if x.IdleTCP, x.IdleTCPRec, err = cpuPerS(podTCP); err != nil {
		return err
	}
	if x.IdleICMP, x.IdleICMPRec, err = cpuPerS(podICMP); err != nil {
		return err
	}
	f.Idle = Idle{CPUMSPerS: num(x.IdleTCP)}
	f.Rate = Rate{PacketsPerS: num(max(x.RateTCP, x.RateICMP))}
	return nil
}
