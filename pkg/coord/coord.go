// Package coord lets the ADDs that wait on one target on a node share its
// probing without a daemon, through small files under /run/netready: an
// flock says who leads, a timestamp meters the followers' attempts, and a
// futex word in the lead file, mapped by all, wakes them when the leader's
// target answered.
//
// Nothing here may make an ADD fail: Open and Target return an error (the
// caller then probes alone, at the full schedule, and logs why), and a
// Target that meets an error later grants the lead, which is the same.
package coord

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/netready/netready/internal/threadns"
)

// DefaultDir is on tmpfs on every systemd host (and K3s's): nothing in it
// survives a reboot, so no stale leader or timestamp can outlive one.
const DefaultDir = "/run/netready"

// SlotGap is the least time between two followers' attempts on one target
// on one node: 8 a second whatever the number of followers, which with a
// leader at the default schedule (25 a second) leaves room under 40 for the
// attempts that node events add.
const SlotGap = 125 * time.Millisecond

// Node is the coordination directory of this node, opened by one ADD.
type Node struct {
	dir   *os.File // held open: every file is opened relative to it
	netns string   // the node netns's identity, mixed into every name
	wake  chan struct{}
	// closeBit wakes this ADD's own futex waiters on Close.
	closeBit uint32
	waiters  sync.WaitGroup

	mu      sync.Mutex
	targets []*Target // guarded by mu
	closed  bool      // guarded by mu
}

// Open opens (creating it if missing) the coordination directory dir. It
// refuses a directory that is a symlink, is not owned by this process's
// user, or that others may read or write: whoever can write there could
// hold every lead and slow every ADD down.
func Open(dir string) (*Node, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		if err := unix.Mkdir(dir, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("cannot create %s: %w", dir, err)
		}
		fd, err = unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot open %s as a directory (a symlink is refused): %w", dir, err)
	}
	d := os.NewFile(uintptr(fd), dir)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		d.Close()
		return nil, fmt.Errorf("stat %s: %w", dir, err)
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&0o077 != 0 {
		d.Close()
		return nil, fmt.Errorf("%s must be owned by uid %d with mode 0700, it is uid %d mode %#o", dir, os.Geteuid(), st.Uid, st.Mode&0o777)
	}
	netns, err := netnsID()
	if err != nil {
		d.Close()
		return nil, err
	}
	return &Node{dir: d, netns: netns, wake: make(chan struct{}, 1), closeBit: 1 << (1 + rand.N(31))}, nil
}

// netnsID names the netns netready runs in, the node's: two simulated nodes
// on one host (or a test bed beside a real node) must not share leads. It
// asks for the calling thread's netns, not /proc/self's: that is the main
// thread's, and the main thread may be the one locked into the pod's netns
// to make its sockets (pkg/probe), which would give every such pod a table
// of its own. It asks a socket, not /proc/thread-self (internal/threadns).
func netnsID() (string, error) {
	id, err := threadns.Self()
	if err != nil {
		return "", err
	}
	return strconv.FormatUint(id.Dev, 16) + ":" + strconv.FormatUint(id.Ino, 16), nil
}

// Answered wakes when the leader of one of this ADD's targets saw it answer
// (or, rarely, spuriously: that costs one attempt). A buffer of one
// coalesces bursts.
func (n *Node) Answered() <-chan struct{} { return n.wake }

// Name is the base name of key's files: derived from the node netns and the
// target, so that it holds no character an operator must escape and no
// target (a URL) leaks into a name.
func Name(netns, key string) string {
	sum := sha256.Sum256([]byte(netns + "\x00" + key))
	return hex.EncodeToString(sum[:16])
}

// Target is this ADD's seat at one target. It implements gate.Peer.
type Target struct {
	n     *Node
	lead  *os.File // flock held by the leader
	slot  *os.File // the followers' last attempt, 8 bytes of Unix nanoseconds
	word  []byte   // the first 4 bytes of lead, mapped shared: the answer counter
	gone  bool     // word is unmapped; guarded by n.mu
	mu    sync.Mutex
	leads bool // guarded by mu
	now   func() time.Time
}

// wordSize is what the lead file holds: a futex word. A futex, not inotify,
// wakes the followers: inotify instances are limited per user (128 by
// default), and a node with 110 waiting ADDs, besides the kubelet's and
// containerd's own, runs out of them.
const wordSize = 4

// futex(2) operations, shared between processes (no FUTEX_PRIVATE_FLAG).
// With bitsets a waiter is woken by the leader's answer (answerBit) or by
// its own Close (closeBit, one of 31 picked at random): a Close wakes a
// thirty-first of the other ADDs' waiters, which find the counter unchanged
// and wait again.
const (
	futexWaitBitset = 9  // FUTEX_WAIT_BITSET: the timeout is absolute, CLOCK_MONOTONIC
	futexWakeBitset = 10 // FUTEX_WAKE_BITSET
	answerBit       = 1
)

// Target opens the files of key (a probe's URL, say) and starts waiting on
// its answer counter. An error means this target is probed alone.
func (n *Node) Target(key string) (*Target, error) {
	name := Name(n.netns, key)
	lead, err := n.openFile(name + ".lead")
	if err != nil {
		return nil, err
	}
	slot, err := n.openFile(name + ".slot")
	if err != nil {
		lead.Close()
		return nil, err
	}
	fail := func(err error) (*Target, error) {
		lead.Close()
		slot.Close()
		return nil, fmt.Errorf("%s/%s.lead: %w", n.dir.Name(), name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(lead.Fd()), &st); err != nil {
		return fail(err)
	}
	if st.Size < wordSize {
		// Only ever grown, never shrunk: a mapping past the end of a file
		// faults (SIGBUS), and others have it mapped.
		if err := unix.Ftruncate(int(lead.Fd()), wordSize); err != nil {
			return fail(err)
		}
	}
	word, err := unix.Mmap(int(lead.Fd()), 0, wordSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail(fmt.Errorf("mmap: %w", err))
	}
	t := &Target{n: n, lead: lead, slot: slot, word: word, now: time.Now}
	n.mu.Lock()
	n.targets = append(n.targets, t)
	n.mu.Unlock()
	n.waiters.Go(t.waitAnswers)
	return t, nil
}

// futexWait is how long one wait lasts before it looks whether the ADD is
// done: the goroutine of a finished ADD lingers at most this long, and the
// process usually exits first.
const futexWait = 5 * time.Second

// waitAnswers forwards every change of the answer counter to Node.Answered.
// The wait is a shared (not private) futex on the mapped file: the leader's
// FUTEX_WAKE reaches every process that maps it.
func (t *Target) waitAnswers() {
	// The word is a mapping of a file: if someone shrank it, reading it
	// faults. Turn that into a panic, and the panic into no more wake-ups:
	// the slow schedule still runs.
	debug.SetPanicOnFault(true)
	defer func() {
		recover()
		t.n.mu.Lock()
		t.gone = true
		unix.Munmap(t.word)
		t.n.mu.Unlock()
	}()
	addr := (*uint32)(unsafe.Pointer(&t.word[0]))
	for {
		v := atomic.LoadUint32(addr)
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			return
		}
		ts = unix.NsecToTimespec(ts.Nano() + int64(futexWait))
		unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWaitBitset, uintptr(v),
			uintptr(unsafe.Pointer(&ts)), 0, uintptr(answerBit|t.n.closeBit))
		t.n.mu.Lock()
		closed := t.n.closed
		t.n.mu.Unlock()
		if closed {
			return
		}
		if atomic.LoadUint32(addr) != v {
			select {
			case t.n.wake <- struct{}{}:
			default:
			}
		}
	}
}

// openFile opens (creating) a regular file in the directory, following no
// symlink, and refuses anything else found under that name.
func (n *Node) openFile(name string) (*os.File, error) {
	fd, err := unix.Openat(int(n.dir.Fd()), name, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cannot open %s/%s: %w", n.dir.Name(), name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s/%s is not a regular file", n.dir.Name(), name)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// Lead takes the lead if nobody holds it. The kernel releases an flock when
// its holder exits however it exits (SIGKILL too), so a follower's next
// Lead, within a slow interval, takes over from a leader that left.
func (t *Target) Lead() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.leads {
		return true
	}
	err := unix.Flock(int(t.lead.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return false
	}
	// Held now, or the lock failed for another reason: lead either way,
	// which is probing as if alone.
	t.leads = err == nil
	return true
}

// Slot reports whether this follower may send an attempt: at most one per
// SlotGap among all the followers of the target. It never blocks: when
// another is taking a slot at this very moment, this one skips its turn.
// Content that is not a timestamp (a corrupt file) counts as a free slot
// and is overwritten.
func (t *Target) Slot() bool {
	fd := int(t.slot.Fd())
	err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return false
	}
	if err != nil {
		return true
	}
	defer unix.Flock(fd, unix.LOCK_UN)
	now := t.now()
	var buf [8]byte
	if n, err := unix.Pread(fd, buf[:], 0); err == nil && n == len(buf) {
		last := time.Unix(0, int64(binary.LittleEndian.Uint64(buf[:])))
		// A timestamp in the future (a clock stepped back) frees the slot
		// rather than stalling every follower until the clock catches up.
		if d := now.Sub(last); d >= 0 && d < SlotGap {
			return false
		}
	}
	binary.LittleEndian.PutUint64(buf[:], uint64(now.UnixNano()))
	unix.Pwrite(fd, buf[:], 0) // an error here costs only an extra attempt elsewhere
	return true
}

// Answered wakes the others waiting on the target, then gives up the lead
// if this ADD holds it. The gate calls it for a leader's answer and for a
// follower's answer to an attempt of its own; a leader whose own path stays
// closed (a stale neighbour, its namespace's policy) must not keep the
// others on the followers' slow budget once the target answers someone.
func (t *Target) Answered() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.wakeFollowers()
	if t.leads {
		unix.Flock(int(t.lead.Fd()), unix.LOCK_UN)
		t.leads = false
	}
}

func (t *Target) wakeFollowers() {
	defer func(old bool) {
		recover() // a shrunk file: the followers' slow schedule still runs
		debug.SetPanicOnFault(old)
	}(debug.SetPanicOnFault(true))
	t.n.mu.Lock()
	defer t.n.mu.Unlock()
	if t.n.closed || t.gone {
		return
	}
	addr := (*uint32)(unsafe.Pointer(&t.word[0]))
	atomic.AddUint32(addr, 1)
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWakeBitset, math.MaxInt32, 0, 0, answerBit)
}

// closeWakes are the waits between Close's wake-ups of its own futex
// waiters, each wake-up sent only if a waiter is still there: a waiter that
// was between reading the counter and entering its wait misses a wake-up.
// Few and growing, because each wake-up through closeBit also wakes a
// thirty-first of the other ADDs' waiters, and after an opening 110 ADDs
// close at once on a CPU they saturate (waking every millisecond until the
// waiter left multiplied those spurious wake-ups). Past the last, a waiter
// left behind ends at its timeout (futexWait); the process usually exits
// first.
var closeWakes = []time.Duration{2 * time.Millisecond, 8 * time.Millisecond, 40 * time.Millisecond}

// Close releases every lead this ADD holds and ends its futex waits.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	done := make(chan struct{})
	go func() { n.waiters.Wait(); close(done) }()
wake:
	for _, d := range closeWakes {
		n.mu.Lock()
		for _, t := range n.targets {
			if !t.gone {
				addr := (*uint32)(unsafe.Pointer(&t.word[0]))
				unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWakeBitset, math.MaxInt32, 0, 0, uintptr(n.closeBit))
			}
		}
		n.mu.Unlock()
		select {
		case <-done:
			break wake
		case <-time.After(d):
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, t := range n.targets {
		// Explicitly: the mapping of the lead file holds its open file,
		// so closing the fd alone would keep the flock until the munmap.
		unix.Flock(int(t.lead.Fd()), unix.LOCK_UN)
		t.lead.Close()
		t.slot.Close()
	}
	n.targets = nil
	return n.dir.Close()
}
