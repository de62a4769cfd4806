// Package coord lets the ADDs that wait on one target on a node share its
// probing without a daemon, through small files under /run/netready: an
// flock says who leads, a timestamp meters the followers' attempts, and a
// counter in the lead file, mapped by all, with a FIFO beside it whose
// pollers a byte wakes, tells them when the target answered someone.
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
	// waiters are the targets' waitAnswers, which Close ends.
	waiters sync.WaitGroup

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
	return &Node{dir: d, netns: netns, wake: make(chan struct{}, 1)}, nil
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
	lead  *os.File    // flock held by the leader
	slot  *os.File    // the followers' last attempt, 8 bytes of Unix nanoseconds
	word  []byte      // the first 4 bytes of lead, mapped shared: the answer counter
	bell  *os.File    // a FIFO rung after each answer (ring), in Go's poller
	woken atomic.Bool // another ADD announced an answer since Woken's last call
	gone  bool        // word is unmapped; guarded by n.mu
	mu    sync.Mutex
	leads bool // guarded by mu
	now   func() time.Time
}

// wordSize is what the lead file holds: the answer counter, which only
// ever changes; a waiter compares it with the value it last saw, so a
// wake-up that did not come from an answer costs nothing.
const wordSize = 4

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
	seen, ok := loadWord(word)
	if !ok {
		unix.Munmap(word)
		return fail(errors.New("shrunk under its mapping"))
	}
	bell, err := n.openBell(name + ".bell")
	if err != nil {
		unix.Munmap(word)
		lead.Close()
		slot.Close()
		return nil, err
	}
	t := &Target{n: n, lead: lead, slot: slot, word: word, bell: bell, now: time.Now}
	n.mu.Lock()
	n.targets = append(n.targets, t)
	n.mu.Unlock()
	n.waiters.Go(func() { t.waitAnswers(seen) })
	return t, nil
}

// loadWord reads the answer counter. The word is a mapping of a file: if
// someone shrank it, reading it faults, which is turned into ok false
// instead of a crash.
func loadWord(word []byte) (v uint32, ok bool) {
	defer func(old bool) {
		if recover() != nil {
			ok = false
		}
		debug.SetPanicOnFault(old)
	}(debug.SetPanicOnFault(true))
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&word[0]))), true
}

// waitAnswers forwards every change of the answer counter from seen on to
// Node.Answered, looking at it each time the bell rings, until Close
// closes the bell.
//
// The bell is a FIFO that nobody reads for its bytes: a byte written to it
// wakes every poller that waits on it, and Go's poller waits for this
// goroutine without holding a thread. (A futex did this before: it held a
// thread in its wait, and with the process's one P held by that thread's
// syscall, every wake-up reached the gate's goroutine only once the
// runtime's sysmon took the P back, 20 µs or more later; after an opening,
// when 110 ADDs wake at once on two CPUs, those hand-offs waited in the run
// queue behind everyone else. Not inotify either: its instances are
// limited per user, 128 by default, and a node with 110 waiting ADDs,
// besides the kubelet's and containerd's own, runs out of them.)
func (t *Target) waitAnswers(seen uint32) {
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
	rc, err := t.bell.SyscallConn()
	if err != nil {
		return
	}
	addr := (*uint32)(unsafe.Pointer(&t.word[0]))
	// Read calls f at once, then each time the poller reports the bell
	// readable, until Close: f never reads, so it never is done.
	_ = rc.Read(func(uintptr) bool {
		if v := atomic.LoadUint32(addr); v != seen {
			seen = v
			t.woken.Store(true)
			select {
			case t.n.wake <- struct{}{}:
			default:
			}
		}
		return false
	})
}

// openBell opens (making it when missing) a FIFO in the directory: read
// and write, so that opening it never blocks and its pollers never see a
// hang-up; non-blocking, so that Go's poller waits on it. It follows no
// symlink and refuses anything else found under that name.
func (n *Node) openBell(name string) (*os.File, error) {
	dirfd := int(n.dir.Fd())
	if err := unix.Mknodat(dirfd, name, unix.S_IFIFO|0o600, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("cannot make %s/%s: %w", n.dir.Name(), name, err)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDWR|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cannot open %s/%s: %w", n.dir.Name(), name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		unix.Close(fd)
		return nil, fmt.Errorf("%s/%s is not a FIFO", n.dir.Name(), name)
	}
	return os.NewFile(uintptr(fd), name), nil
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

// Woken reports whether the target's answer counter changed since the last
// call: Node.Answered wakes for any of the ADD's targets, this says which.
func (t *Target) Woken() bool { return t.woken.Swap(false) }

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
	atomic.AddUint32((*uint32)(unsafe.Pointer(&t.word[0])), 1)
	t.ring()
}

// ring writes a byte to the bell, which wakes every poller waiting on it,
// after the counter changed. Nobody else reads the bell: a reader that
// emptied it could do so between a byte's wake-up and a poller's look at
// the bell, which then finds nothing to read and reports nothing. The
// ringer empties it instead, just before its own byte, so that the byte
// finds it empty (some kernels wake a pipe's pollers only then; 6.x does on
// every write, for epoll's sake) and it never fills: a poller that looked
// in between is woken again by that byte, and sees the counter of both
// answers. Raw syscalls: no wrapper that wakes the runtime's sysmon as an
// ADD answers.
func (t *Target) ring() {
	rc, err := t.bell.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		var buf [64]byte
		for {
			n, _, errno := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
			if errno != 0 || n < uintptr(len(buf)) {
				break
			}
		}
		one := [1]byte{1}
		unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&one[0])), 1) // an error costs the followers a slow interval
	})
}

// Close releases every lead this ADD holds and ends its waits on the
// targets' answers.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	targets := n.targets
	n.mu.Unlock()
	for _, t := range targets {
		t.bell.Close() // ends its waitAnswers at once
	}
	n.waiters.Wait()
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
