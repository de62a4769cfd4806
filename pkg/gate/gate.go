// Package gate waits until every condition on a pod's network holds, or its
// deadline passes: the engine behind netready's ADD and CHECK.
package gate

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/netready/netready/pkg/config"
)

// Kind says how the gate drives a condition.
type Kind int

const (
	// Local conditions read the pod netns's own state (links, addresses,
	// routes) through netlink. They are cheap, so the gate evaluates them on
	// its own goroutine at the start and again whenever the pod netns reports
	// a change: never on a timer.
	Local Kind = iota
	// Active conditions send packets (a probe, the gateway ping). Each
	// attempt has a fresh socket and runs on its own goroutine, or on the
	// gate's when the condition has Start, on a backing-off schedule plus
	// an immediate extra attempt on every change.
	Active
)

func (k Kind) String() string {
	if k == Local {
		return "local"
	}
	return "active"
}

// Condition is one thing that must hold before the pod may start.
type Condition struct {
	Name string // as shown to the operator: "route to 10.0.0.5", "tcp://10.0.0.5:5432"
	Kind Kind
	// Check evaluates the condition once; nil means it holds. Active checks
	// must return promptly once ctx is done. An error wrapped by Permanent
	// ends the whole gate at once: waiting longer cannot help.
	Check func(ctx context.Context) error
	// Start, if set, is how the gate makes an attempt of an Active
	// condition, instead of a goroutine running Check: it sends one without
	// blocking. It returns the attempt in flight, or nil when the attempt
	// ended inside the call, with err its outcome as Check's. ready is
	// called, from any goroutine, possibly before Start returns and after
	// the attempt ended, each time the attempt may have ended; it does not
	// block. A waiting ADD makes about 25 attempts a second, and a goroutine
	// and a context for each cost more than the attempt's own syscalls.
	Start func(ready func()) (Attempt, error)
	// Close, if set, frees what the condition keeps between attempts (a
	// TCP probe keeps the sockets of closed attempts to use again). The
	// gate calls it once, when every attempt is closed.
	Close func()
}

// Attempt is an attempt in flight, made by Condition.Start. The gate uses
// it from its own goroutine only.
type Attempt interface {
	// Result reports whether the attempt has ended and how (nil: it was
	// answered). The gate asks after each call of ready, until it has
	// ended or been closed.
	Result() (done bool, err error)
	// Close ends the attempt, ended or not, and frees what it holds.
	// ready is not called once Close has returned. The gate calls it once.
	Close()
}

// Options tune the wait. Zero values take the defaults noted.
type Options struct {
	Interval       time.Duration // first gap between attempts of a probe (config.DefaultInterval)
	MaxInterval    time.Duration // the gap doubles up to this (config.DefaultMaxInterval)
	AttemptTimeout time.Duration // one attempt's budget (config.DefaultAttemptTimeout)
	// MaxInFlight caps the attempts of one probe that wait for an answer at
	// once (8). At the cap the oldest is closed to make room: the answer that
	// counts after a path opens is the one to a packet sent after it opened,
	// since a dropped SYN is retransmitted by the kernel only after a second.
	// At the default schedule an attempt thus lives about 8×40 ms, enough for
	// any target within a few hundred milliseconds' round trip.
	MaxInFlight int
	// SlowInterval is how often a shared probe that does not lead tries to
	// take the lead or a slot (1s): the bound on a takeover after the leader
	// left without an answer (timeout, killed).
	SlowInterval time.Duration

	// FirstRound is how long the gate runs on its schedule alone before it
	// calls Watch, if any conditions are still unmet then. Most pods find
	// their network already working, and pay nothing for watchers; 0 calls
	// Watch before the first evaluation.
	FirstRound time.Duration
	// Watch, when set, starts what wakes or ends the gate while it waits,
	// once the first round is over with conditions unmet. It is called at
	// most once, on the gate's goroutine; end stops the gate with a cause
	// (the pod's netns was removed, say), which Report.Err then holds. The
	// gate evaluates every local condition and tries every pending probe
	// right after it returns, so no change made before it falls through.
	// An error ends the gate (Report.Err holds it); Watch has then stopped
	// whatever it had started. unmet[i] reports whether conds[i] still
	// waits: only those need a Peer (a target already answered would only
	// wake this ADD for the others' answers).
	Watch func(ctx context.Context, end context.CancelCauseFunc, unmet []bool) (Wakeups, error)
	// Detach makes Run return as soon as the outcome is known and close
	// what the wait started (attempts in flight, Wakeups.Close) on a
	// goroutine of its own; Report.Closed says when that is done. It is for
	// a process that exits right after (the plugin), whose exit closes it
	// all at once: closing it in order takes about a millisecond on a small
	// VM (the node and pod watchers, the coordination, the timerfd), spent
	// between the pod's network coming up and the runtime hearing of it.
	Detach bool
	// DetachDelay, with Detach, is how long the closing waits before it
	// starts: a process that exits within it never pays for it. After an
	// opening, when every waiting ADD on the node answers at once, a
	// closing that started at once competed for the CPU with the others'
	// answers, and its ordinary syscalls woke the runtime's sysmon. A
	// process that lives on has it all closed once the delay is over.
	DetachDelay time.Duration
}

// Wakeups are what Watch started: what wakes a waiting gate, how it shares
// its probes with the other ADDs on the node, and how to stop them all.
type Wakeups struct {
	// PodChanged wakes the gate when a link, address, route or neighbour
	// changed in the pod netns: local conditions are evaluated again and
	// every pending probe is tried at once.
	PodChanged <-chan struct{}
	// NodeChanged wakes the gate when a route, neighbour, link or nftables
	// ruleset changed in the node netns: every pending probe is tried at once.
	NodeChanged <-chan struct{}
	// NodeWanted, if set, is told whether the gate has a use for
	// NodeChanged: only while a pending probe is probed alone or leads. A
	// follower's leader follows the node's events for it (and wakes it
	// through PeerAnswered), so while every pending probe follows, the
	// watcher can stop waking this process. It is called with false only
	// after Watch, and with true again when this ADD takes a lead.
	NodeWanted func(bool)

	// Peers shares the probing of a target with the other ADDs on the node
	// that wait on it: Peers[i] for conds[i], nil (or a short slice) for a
	// condition probed alone at the full schedule. A shared probe that does
	// not lead tries to take the lead every SlowInterval and, when its Peer
	// grants a slot, sends one attempt of its own then; it also tries at
	// once on PeerAnswered, and on PodChanged and NodeChanged when a slot
	// is free (see NodeWanted).
	Peers []Peer
	// PeerAnswered wakes the gate when another ADD saw a shared target
	// answer (Peer.Answered): every shared probe that does not lead and
	// whose Peer was Woken tries at once, from its own netns (a pod never
	// takes another pod's answer for its own).
	PeerAnswered <-chan struct{}

	// Poll, if set, looks for what has no event to wake the gate (the
	// pod's netns removed: netlink has none) and calls Watch's end with its
	// cause when it finds it. The gate calls it on its goroutine at its
	// first wake-up PollEvery (1s) or more after the last call, and wakes
	// for it alone only when no other wake-up came within twice that: each
	// wake-up of a waiting process costs more than what it does, and a
	// follower, which wakes about once a second for its slow attempts,
	// then never wakes for Poll alone.
	Poll      func()
	PollEvery time.Duration

	// Timer, if set, is what the gate sleeps on between wake-ups from
	// Watch's return on, instead of a Go timer (a timerfd: see
	// internal/fdtimer for why). Close closes it.
	Timer Timer

	// Notes go to Report.Notes (why a probe is not shared, say).
	Notes []string
	// Close, if set, stops what Watch started. The gate calls it before Run
	// returns, once every attempt has finished.
	Close func()
}

// Timer is what the gate sleeps on between wake-ups: a time.Timer's C,
// Reset and Stop. A firing that a later Reset made stale may still arrive
// on C; the gate takes it as a spurious wake-up.
type Timer interface {
	C() <-chan time.Time
	Reset(d time.Duration)
	Stop()
}

// goTimer is a time.Timer as a Timer.
type goTimer struct{ *time.Timer }

func (t goTimer) C() <-chan time.Time   { return t.Timer.C }
func (t goTimer) Reset(d time.Duration) { t.Timer.Reset(d) }
func (t goTimer) Stop()                 { t.Timer.Stop() }

// Peer is one ADD's seat at a target that several ADDs on the node wait on.
// Its methods never block for long and never fail: a Peer that cannot
// coordinate grants the lead, which is the unshared schedule.
type Peer interface {
	// Lead reports whether this ADD leads the probing of the target now,
	// taking the lead when nobody holds it.
	Lead() bool
	// Slot reports whether a follower may send a slow attempt now: the
	// followers of a target share a budget of attempts per second.
	Slot() bool
	// Answered tells the others that the target answered this ADD, and
	// gives up the lead if this ADD held it: this ADD probes it no more. The
	// gate calls it for a leader's answer and for a follower's answer to an
	// attempt of its own (a slot, an event): the leader's path can stay
	// closed while others' open (a stale neighbour in its netns, a policy
	// of its namespace), and the others then need not wait for slots. A
	// follower's answer to the attempt that an announcement woke it for is
	// not announced again: 110 followers would wake each other 110 times.
	Answered()
	// Woken reports whether another ADD announced an answer of the target
	// since the last call. PeerAnswered wakes the gate for any of the ADD's
	// targets; only the probes of those that answered try: a gateway that
	// answered must not send a packet to a database that did not.
	Woken() bool
}

// setDefaults fills in what was left zero: the schedule with the conflist's
// own defaults (config owns them), the rest with the gate's.
func (o *Options) setDefaults() {
	if o.Interval <= 0 {
		o.Interval = config.DefaultInterval
	}
	if o.MaxInterval < o.Interval {
		o.MaxInterval = max(o.Interval, config.DefaultMaxInterval)
	}
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = config.DefaultAttemptTimeout
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 8
	}
	if o.SlowInterval <= 0 {
		o.SlowInterval = time.Second
	}
}

// followerAttemptTimeout is under the kernel's initial TCP retransmission
// timeout (1 s, RFC 6298), with room for a few hundred milliseconds of
// round trip.
const followerAttemptTimeout = 900 * time.Millisecond

// eventBurst and the refill of one token per eventRefill bound the extra
// attempts that netlink events may trigger: a busy node (pods coming and
// going, their neighbour entries ageing) must not turn the gate into a
// packet storm. Each event's attempt also restarts the schedule, but events
// that fall just after scheduled attempts add one each, so the refill is
// what bounds them: 5 a second, which keeps one pod at the default
// schedule (25) under 30 packets a second, and a node (a leader and the
// followers' 8) under 40, whatever the number of pods. Refilled once per
// MaxInterval, as before, a leader on a node with 110 new pods sent 4-7
// packets a second more than that. A burst of 3 still meets the events of
// a quiet node (flannel's route, a rule) at once.
const (
	eventBurst  = 3
	eventRefill = 200 * time.Millisecond
)

// permanentError marks an error that waiting cannot fix.
type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

// Permanent wraps err so that the gate stops at once when a check returns it
// (the pod's netns is gone, say).
func Permanent(err error) error { return permanentError{err} }

// IsPermanent reports whether err was marked by Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// ErrNoAnswer is recorded for an attempt that got no answer before it was
// closed to make room for a newer one.
var ErrNoAnswer = errors.New("no answer")

// Status is the outcome of one condition.
type Status struct {
	Name     string
	Kind     Kind
	Ready    bool
	After    time.Duration // since the gate started, when it (last) became ready
	Attempts int
	LastErr  error // the last failure seen, nil if none
	// LastCause is, when LastErr is a timeout (or an attempt closed to make
	// room), the last failure before it that was not: the kernel sends a
	// host at most one ICMP error a second, so a firewall's reject ends one
	// attempt in many and the rest only time out; the reject says why.
	LastCause error
}

// Report is the outcome of a gate run.
type Report struct {
	Conditions []Status
	Start      time.Time // when the gate started; Status.After counts from here
	Waited     time.Duration
	// Err is why the gate stopped before all conditions held: the context was
	// cancelled (Err is then its cause, which wraps context.Canceled when it
	// was given none), Watch's end was called (its cause), Watch failed, or
	// a check failed with a Permanent error. It is nil when all conditions
	// held and when the context's deadline passed.
	Err error
	// Notes are what the operator should know about how the gate ran, such
	// as why a probe was not shared with the other ADDs on the node.
	Notes []string
	// Closed is closed once everything the run started is closed: before
	// Run returns, or after it with Options.Detach.
	Closed <-chan struct{}
}

// Ready reports whether every condition held when the gate returned.
func (r *Report) Ready() bool {
	if r.Err != nil {
		return false
	}
	for _, c := range r.Conditions {
		if !c.Ready {
			return false
		}
	}
	return true
}

// Unmet lists the conditions that did not hold.
func (r *Report) Unmet() []Status {
	var out []Status
	for _, c := range r.Conditions {
		if !c.Ready {
			out = append(out, c)
		}
	}
	return out
}

// Summary names every unmet condition with its last error and attempt count,
// e.g. "tcp://10.15.21.167:9000: i/o timeout (412 attempts)".
func (r *Report) Summary() string {
	var parts []string
	for _, c := range r.Unmet() {
		msg := "not ready"
		if c.LastErr != nil {
			msg = c.LastErr.Error()
		}
		if c.LastCause != nil {
			msg += ", earlier: " + c.LastCause.Error()
		}
		unit := "attempts"
		if c.Kind == Local {
			unit = "checks"
		}
		parts = append(parts, fmt.Sprintf("%s: %s (%d %s)", c.Name, msg, c.Attempts, unit))
	}
	return strings.Join(parts, "; ")
}

// An attempt's timeout is kept by the gate, not by a context deadline: a
// deadline of its own would be a Go timer (two, with the poller deadline
// that the probe sets on its socket from it), and each stays in the
// runtime's heap after the attempt is closed early, which most are
// (MaxInFlight), to wake the idle process when it would have expired. The
// deadline an attempt's context does carry is the whole gate's.
type attempt struct {
	cond     int
	cancel   context.CancelFunc // a goroutine's attempt (Check); nil for Start's
	pending  Attempt            // Start's attempt, while in flight
	closed   bool               // Start's attempt has ended or been closed: its result is in run.ended
	deadline time.Time          // closed by the gate, as timed out, from then on
	dropped  bool               // closed by the gate to make room, or because its condition is met
	expired  bool               // closed by the gate at its deadline
	woken    bool               // a follower's attempt on another ADD's announced answer
}

type result struct {
	a   *attempt
	err error
}

type probeState struct {
	interval time.Duration
	next     time.Time
	inflight []*attempt // oldest first
	tokens   float64
	refilled time.Time
	peer     Peer  // nil: probed alone
	leads    bool  // peer granted the lead: the full schedule
	cause    error // the last failure that was not a timeout (Status.LastCause)
}

type run struct {
	opt     Options
	ctx     context.Context
	end     context.CancelCauseFunc // ends ctx with a cause; Watch's end
	conds   []Condition
	status  []Status
	probes  []probeState
	start   time.Time
	results chan result // Check's attempts end here
	running int         // goroutines running Check

	// Start's attempts: those whose ready was called (under readyMu, from
	// any goroutine; kick then has a value), and the outcomes the gate has
	// yet to record.
	readyMu    sync.Mutex
	readyList  []*attempt
	readySpare []*attempt
	kick       chan struct{}
	ended      []result
	toClose    []Attempt // ended: closed once the gate knows it goes on waiting

	watchAt  time.Time // when the first round ends and Watch is called
	watching bool      // Watch was called (or there is none)
	wake     Wakeups   // what Watch started; zero before
	polled   time.Time // when wake.Poll was last called (or Watch returned)
	nodeOff  bool      // wake.NodeWanted was last told false
	notes    []string
}

// Run evaluates all conditions at once and returns when all hold, when ctx's
// deadline passes, when ctx is cancelled, when a check fails permanently or
// when Watch's end is called. It returns only after every attempt it started
// has finished and what Watch started is closed.
func Run(ctx context.Context, conds []Condition, opt Options) *Report {
	opt.setDefaults()
	ctx, end := context.WithCancelCause(ctx)
	r := &run{
		opt:      opt,
		ctx:      ctx,
		end:      end,
		conds:    conds,
		status:   make([]Status, len(conds)),
		probes:   make([]probeState, len(conds)),
		start:    time.Now(),
		results:  make(chan result),
		kick:     make(chan struct{}, 1),
		watching: opt.Watch == nil,
	}
	r.watchAt = r.start.Add(opt.FirstRound)
	for i, c := range conds {
		r.status[i] = Status{Name: c.Name, Kind: c.Kind}
		r.probes[i] = probeState{interval: opt.Interval, next: r.start, tokens: eventBurst, refilled: r.start}
	}
	err := r.loop()
	closed := make(chan struct{})
	report := &Report{Conditions: r.status, Start: r.start, Waited: time.Since(r.start), Err: err, Notes: r.notes, Closed: closed}
	closeAll := func() {
		r.stopAll()
		for _, c := range conds {
			if c.Close != nil {
				c.Close()
			}
		}
		if r.wake.Close != nil {
			r.wake.Close()
		}
		end(nil)
		close(closed)
	}
	if opt.Detach {
		time.AfterFunc(opt.DetachDelay, closeAll)
	} else {
		closeAll()
	}
	return report
}

func (r *run) loop() error {
	if !r.watching && r.opt.FirstRound <= 0 {
		if err := r.watch(time.Now()); err != nil {
			return err
		}
	} else if err := r.evalLocal(); err != nil {
		return err
	}
	timer := r.sleepOn(goTimer{time.NewTimer(time.Hour)})
	defer func() { timer.Stop() }()
	for {
		now := time.Now()
		r.expire(now)
		r.launchDue(now)
		if err := r.record(); err != nil {
			return err
		}
		if r.allReady() {
			return nil // what ended is closed after the answer (Detach)
		}
		r.closeEnded()
		r.wantNode()
		if !r.watching && !now.Before(r.watchAt) && r.ctx.Err() == nil {
			if err := r.watch(now); err != nil {
				return err
			}
			timer = r.sleepOn(timer)
			continue // try every pending probe now
		}
		r.poll(now)
		timer.Reset(r.nextWake(now).Sub(now))

		select {
		case <-r.ctx.Done():
			if errors.Is(r.ctx.Err(), context.DeadlineExceeded) {
				return nil // timed out: the report lists what is unmet
			}
			return context.Cause(r.ctx) // a signal, the netns going away, ...
		case <-r.wake.PodChanged:
			if err := r.evalLocal(); err != nil {
				return err
			}
			r.launchOnEvent(time.Now())
		case <-r.wake.NodeChanged:
			r.launchOnEvent(time.Now())
		case <-r.wake.PeerAnswered:
			r.launchFollowers(time.Now())
		case res := <-r.results:
			r.running--
			if err := r.finish(res); err != nil {
				return err
			}
		case <-r.kick:
			r.collect()
			// Now, not at the loop's next turn: a probe answered must not
			// be due for another attempt there.
			if err := r.record(); err != nil {
				return err
			}
		case <-timer.C():
		}
	}
}

// watch ends the first round: it calls Watch, then starts over with what
// Watch started in place, as a gate that had them from the start would: it
// evaluates the local conditions, and every pending probe starts its
// schedule again from now (with its Peer, if it has one). The first round's
// attempts still in flight are closed: they were sent at the full rate and
// unshared, and a follower's budget counts one packet per attempt.
func (r *run) watch(now time.Time) error {
	r.watching = true
	unmet := make([]bool, len(r.conds))
	for i, st := range r.status {
		unmet[i] = !st.Ready
	}
	w, err := r.opt.Watch(r.ctx, r.end, unmet)
	if err != nil {
		return err
	}
	if w.Poll != nil && w.PollEvery <= 0 {
		w.PollEvery = time.Second
	}
	r.wake, r.notes, r.polled = w, append(r.notes, w.Notes...), now
	for i, c := range r.conds {
		p := &r.probes[i]
		for _, a := range p.inflight {
			r.drop(a)
		}
		*p = probeState{interval: r.opt.Interval, next: now, tokens: eventBurst, refilled: now}
		if i < len(w.Peers) && c.Kind == Active {
			p.peer = w.Peers[i]
		}
	}
	return r.evalLocal()
}

// sleepOn is the timer to sleep on once Watch has returned: its own, if it
// gave one, and the gate's Go timer, stopped, is dropped.
func (r *run) sleepOn(current Timer) Timer {
	if r.wake.Timer == nil {
		return current
	}
	current.Stop()
	return r.wake.Timer
}

// wantNode tells Watch's NodeWanted whether a pending probe needs the
// node's events: one probed alone or led by this ADD.
func (r *run) wantNode() {
	if r.wake.NodeWanted == nil {
		return
	}
	want := false
	for i := range r.conds {
		if p := &r.probes[i]; r.pending(i) && (p.peer == nil || p.leads) {
			want = true
			break
		}
	}
	if want == r.nodeOff {
		r.nodeOff = !want
		r.wake.NodeWanted(want)
	}
}

// poll calls Wakeups.Poll if PollEvery has passed since it last did. A
// cause it finds ends ctx, which the loop's select sees next.
func (r *run) poll(now time.Time) {
	if r.wake.Poll == nil || now.Sub(r.polled) < r.wake.PollEvery {
		return
	}
	r.polled = now
	r.wake.Poll()
}

// evalLocal evaluates every local condition against the pod netns's current
// state, ready ones too: a link can go down again while the gate waits.
func (r *run) evalLocal() error {
	for i, c := range r.conds {
		if c.Kind != Local {
			continue
		}
		st := &r.status[i]
		st.Attempts++
		err := c.Check(r.ctx)
		var perm permanentError
		if errors.As(err, &perm) {
			st.Ready, st.LastErr = false, err
			return err
		}
		if err != nil {
			st.Ready, st.LastErr = false, err
			continue
		}
		if !st.Ready {
			st.Ready, st.After = true, time.Since(r.start)
		}
	}
	return nil
}

func (r *run) allReady() bool {
	for _, s := range r.status {
		if !s.Ready {
			return false
		}
	}
	return true
}

func (r *run) pending(i int) bool {
	return r.conds[i].Kind == Active && !r.status[i].Ready
}

// launchDue starts the attempts the schedule calls for, then backs off.
func (r *run) launchDue(now time.Time) {
	for i := range r.conds {
		p := &r.probes[i]
		if !r.pending(i) || now.Before(p.next) {
			continue
		}
		if p.peer != nil && !p.leads {
			if !p.peer.Lead() {
				// A follower: one attempt now and then, when the
				// followers' shared budget has room for it. Refused, it
				// asks again at a random time in the second half of a
				// slow interval: followers that started together would
				// otherwise all ask within the same slot, every second,
				// and one would get it; and a leader that left is still
				// replaced within a slow interval.
				p.next = now.Add(r.opt.SlowInterval)
				if p.peer.Slot() {
					r.launch(i, false)
				} else {
					p.next = now.Add(r.opt.SlowInterval/2 + rand.N(r.opt.SlowInterval/2))
				}
				continue
			}
			// The lead is ours (the leader left, or there was none):
			// the full schedule from its start.
			p.leads, p.interval = true, r.opt.Interval
		}
		r.launch(i, false)
		p.next = now.Add(p.interval)
		p.interval = min(2*p.interval, r.opt.MaxInterval)
	}
}

// launchOnEvent starts an extra attempt of every pending probe, as far as
// each one's token bucket allows, and restarts its schedule from now so the
// extra attempt replaces the next scheduled one instead of adding to it.
//
// A follower tries only when the followers' shared budget has a slot: a
// node event reaches every ADD on the node at once (pods coming and going
// make them by the dozen), and a pod's own attempts make neighbour events in
// its netns, which would otherwise fire the next attempt. Its leader tries
// at once, and if that finds the target answering, wakes every follower
// through PeerAnswered.
func (r *run) launchOnEvent(now time.Time) {
	for i := range r.conds {
		if !r.pending(i) {
			continue
		}
		if p := &r.probes[i]; p.peer != nil && !p.leads && !p.peer.Slot() {
			continue
		}
		r.launchOne(i, now, false)
	}
}

// launchOne starts an extra attempt of probe i if its token bucket allows.
// A leader's (or lone probe's) schedule restarts from now, so the extra
// attempt replaces the next scheduled one; a follower keeps its slow tick.
func (r *run) launchOne(i int, now time.Time, woken bool) {
	p := &r.probes[i]
	p.tokens = min(eventBurst, p.tokens+float64(now.Sub(p.refilled))/float64(eventRefill))
	p.refilled = now
	if p.tokens < 1 {
		return
	}
	p.tokens--
	r.launch(i, woken)
	if p.peer == nil || p.leads {
		p.next = now.Add(p.interval)
	}
}

// launchFollowers starts an attempt of every shared probe that does not
// lead and whose target another ADD saw answer: this pod's path may be
// open too. It is token-bucketed like a netlink event.
func (r *run) launchFollowers(now time.Time) {
	for i := range r.conds {
		if p := &r.probes[i]; r.pending(i) && p.peer != nil && !p.leads && p.peer.Woken() {
			r.launchOne(i, now, true)
		}
	}
}

func (r *run) launch(i int, woken bool) {
	p := &r.probes[i]
	if len(p.inflight) >= r.opt.MaxInFlight {
		r.drop(p.inflight[0])
		p.inflight = p.inflight[1:]
	}
	timeout := r.opt.AttemptTimeout
	if p.peer != nil && !p.leads {
		// A follower's attempt is not closed by newer ones (it has
		// none): closed before the kernel's first SYN retransmission, it
		// stays one packet, which is what the followers' budget counts.
		timeout = min(timeout, followerAttemptTimeout)
	}
	a := &attempt{cond: i, deadline: time.Now().Add(timeout), woken: woken}
	p.inflight = append(p.inflight, a)
	r.status[i].Attempts++
	if start := r.conds[i].Start; start != nil {
		pending, err := start(func() { r.ready(a) })
		if pending == nil {
			a.closed = true
			r.ended = append(r.ended, result{a, err})
		}
		a.pending = pending
		return
	}
	ctx, cancel := context.WithCancel(r.ctx)
	a.cancel = cancel
	r.running++
	check := r.conds[i].Check
	go func() {
		err := check(ctx)
		r.results <- result{a, err}
	}()
}

// ready is Start's ready for a: it hands a to the gate's goroutine.
func (r *run) ready(a *attempt) {
	r.readyMu.Lock()
	r.readyList = append(r.readyList, a)
	r.readyMu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// collect asks each attempt that was ready for its result; record then
// records those that ended.
func (r *run) collect() {
	r.readyMu.Lock()
	list := r.readyList
	r.readyList, r.readySpare = r.readySpare[:0], list
	r.readyMu.Unlock()
	for _, a := range list {
		if a.closed || a.pending == nil {
			continue // closed meanwhile, or ready before Start returned it ended
		}
		if done, err := a.pending.Result(); done {
			r.over(a, err)
		}
	}
	clear(list)
}

// over takes Start's attempt a as ended with err: record records that, and
// closeEnded closes it. An answer that makes the gate done need not wait
// for its socket, nor for the others in flight that it drops, to be closed
// (a few syscalls each): Detach leaves them to its goroutine, or the exit.
func (r *run) over(a *attempt, err error) {
	a.closed = true
	r.toClose = append(r.toClose, a.pending)
	r.ended = append(r.ended, result{a, err})
}

// closeEnded closes Start's attempts that have ended.
func (r *run) closeEnded() {
	for _, p := range r.toClose {
		p.Close()
	}
	clear(r.toClose)
	r.toClose = r.toClose[:0]
}

// record records the results of Start's attempts that have ended.
func (r *run) record() error {
	for len(r.ended) > 0 {
		ended := r.ended
		r.ended = nil
		for _, res := range ended {
			if err := r.finish(res); err != nil {
				return err
			}
		}
	}
	return nil
}

// expire closes the attempts whose deadline has come.
func (r *run) expire(now time.Time) {
	for i := range r.probes {
		for _, a := range r.probes[i].inflight {
			if !a.dropped && !a.expired && !a.closed && !now.Before(a.deadline) {
				a.expired = true
				if a.cancel != nil {
					a.cancel()
				} else {
					r.over(a, context.DeadlineExceeded)
				}
			}
		}
	}
}

// drop closes a to make room, or because its condition is met. Start's
// attempt that has ended already keeps its result.
func (r *run) drop(a *attempt) {
	switch {
	case a.cancel != nil:
		a.dropped = true
		a.cancel()
	case !a.closed:
		a.dropped = true
		r.over(a, context.Canceled)
	}
}

func (r *run) finish(res result) error {
	a := res.a
	if a.cancel != nil {
		a.cancel()
	}
	p := &r.probes[a.cond]
	for j, b := range p.inflight {
		if b == a {
			p.inflight = append(p.inflight[:j], p.inflight[j+1:]...)
			break
		}
	}
	st := &r.status[a.cond]
	if st.Ready {
		return nil // a straggler after the first success
	}
	var perm permanentError
	switch {
	case a.dropped && res.err == context.Canceled:
		// The common end of a waiting ADD's attempt, closed by a newer
		// one: no need for errors.As's reflection to know it.
		st.LastErr, st.LastCause = ErrNoAnswer, p.cause
	case res.err == nil:
		st.Ready, st.After = true, time.Since(r.start)
		for _, b := range p.inflight {
			r.drop(b)
		}
		p.inflight = nil
		if p.peer != nil && (p.leads || !a.woken) {
			p.peer.Answered()
		}
	case errors.As(res.err, &perm):
		st.LastErr = res.err
		return res.err
	case a.dropped:
		st.LastErr, st.LastCause = ErrNoAnswer, p.cause
	case a.expired, errors.Is(res.err, context.DeadlineExceeded):
		st.LastErr, st.LastCause = fmt.Errorf("no answer within %v", r.opt.AttemptTimeout), p.cause
	default:
		st.LastErr, st.LastCause, p.cause = res.err, nil, res.err
	}
	return nil
}

func (r *run) nextWake(now time.Time) time.Time {
	wake := now.Add(time.Hour)
	if !r.watching {
		wake = r.watchAt
	}
	if poll := r.polled.Add(2 * r.wake.PollEvery); r.wake.Poll != nil && poll.Before(wake) {
		wake = poll
	}
	for i := range r.conds {
		p := &r.probes[i]
		if r.pending(i) && p.next.Before(wake) {
			wake = p.next
		}
		for _, a := range p.inflight {
			if !a.dropped && !a.expired && !a.closed && a.deadline.Before(wake) {
				wake = a.deadline
			}
		}
	}
	return wake
}

// stopAll closes every attempt still in flight and waits for their
// goroutines, so a gate run leaves no socket or goroutine behind.
func (r *run) stopAll() {
	for i := range r.probes {
		for _, a := range r.probes[i].inflight {
			r.drop(a)
		}
		r.probes[i].inflight = nil
	}
	r.closeEnded()
	r.ended = nil
	for r.running > 0 {
		<-r.results
		r.running--
	}
}
