// Package coord lets the ADDs that wait on one target on a node share its
// probing without a daemon, through small files under /run/netready: an
// flock says who leads, a timestamp meters the followers' attempts, and a
// write that inotify sees wakes them when the leader's target answered.
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
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultDir is on tmpfs on every systemd host (and K3s's): nothing in it
// survives a reboot, so no stale leader or timestamp can outlive one.
const DefaultDir = "/run/netready"

// SlotGap is the least time between two followers' attempts on one target
// on one node: 10 a second whatever the number of followers, which with a
// leader at the default schedule (25 a second) stays under 40.
const SlotGap = 100 * time.Millisecond

// Node is the coordination directory of this node, opened by one ADD.
type Node struct {
	dir     *os.File // held open: every file is opened relative to it
	netns   string   // the node netns's identity, mixed into every name
	inotify *os.File // read on Go's poller: never call its Fd, which would make it blocking
	ifd     int
	wake    chan struct{}
	wg      sync.WaitGroup

	mu      sync.Mutex
	targets []*Target // guarded by mu
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
	ifd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("inotify: %w", err)
	}
	n := &Node{dir: d, netns: netns, inotify: os.NewFile(uintptr(ifd), "inotify"), ifd: ifd, wake: make(chan struct{}, 1)}
	n.wg.Go(n.readEvents)
	return n, nil
}

// netnsID names the netns netready runs in, the node's: two simulated nodes
// on one host (or a test bed beside a real node) must not share leads. It
// asks for the calling thread's netns, not /proc/self's: that is the main
// thread's, and the main thread may be the one locked into the pod's netns
// to make its sockets (pkg/probe), which would give every such pod a table
// of its own.
func netnsID() (string, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return "", fmt.Errorf("stat /proc/thread-self/ns/net: %w", err)
	}
	return strconv.FormatUint(st.Dev, 16) + ":" + strconv.FormatUint(st.Ino, 16), nil
}

// Answered wakes when the leader of one of this ADD's targets saw it answer
// (or, rarely, on another write to a lead file: a spurious wake costs one
// attempt). A buffer of one coalesces bursts.
func (n *Node) Answered() <-chan struct{} { return n.wake }

func (n *Node) readEvents() {
	buf := make([]byte, 4096)
	for {
		if _, err := n.inotify.Read(buf); err != nil {
			return // closed
		}
		select {
		case n.wake <- struct{}{}:
		default:
		}
	}
}

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
	lead  *os.File // flock held by the leader; written when it saw an answer
	slot  *os.File // the followers' last attempt, 8 bytes of Unix nanoseconds
	mu    sync.Mutex
	leads bool // guarded by mu
	now   func() time.Time
}

// Target opens the files of key (a probe's URL, say) and watches its lead
// file. An error means this target is probed alone.
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
	// Through the held directory, never the path again: /proc/self/fd/N is
	// the directory we checked, and IN_DONT_FOLLOW refuses a symlink.
	path := fmt.Sprintf("/proc/self/fd/%d/%s.lead", n.dir.Fd(), name)
	if _, err := unix.InotifyAddWatch(n.ifd, path, unix.IN_MODIFY|unix.IN_DONT_FOLLOW); err != nil {
		lead.Close()
		slot.Close()
		return nil, fmt.Errorf("inotify on %s/%s.lead: %w", n.dir.Name(), name, err)
	}
	t := &Target{n: n, lead: lead, slot: slot, now: time.Now}
	n.mu.Lock()
	n.targets = append(n.targets, t)
	n.mu.Unlock()
	return t, nil
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

// Answered wakes the followers when this ADD leads (a follower's answer is
// its own business), then gives up the lead.
func (t *Target) Answered() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.leads {
		return
	}
	var buf [8]byte
	binary.LittleEndian.PutUint64(buf[:], uint64(t.now().UnixNano()))
	unix.Pwrite(int(t.lead.Fd()), buf[:], 0)
	unix.Flock(int(t.lead.Fd()), unix.LOCK_UN)
	t.leads = false
}

// Close releases every lead this ADD holds and stops watching.
func (n *Node) Close() error {
	n.mu.Lock()
	for _, t := range n.targets {
		t.lead.Close() // releases the flock
		t.slot.Close()
	}
	n.targets = nil
	n.mu.Unlock()
	err := n.inotify.Close()
	n.wg.Wait()
	return errors.Join(err, n.dir.Close())
}
