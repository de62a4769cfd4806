package coord

import (
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// privDir is a directory as Open wants it: t.TempDir's are 0755.
func privDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

func open(t *testing.T, dir string) *Node {
	t.Helper()
	n, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func target(t *testing.T, n *Node, key string) *Target {
	t.Helper()
	tg, err := n.Target(key)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// Two Nodes stand for two ADD processes: flocks belong to open files, so
// they exclude each other within one process as across processes.
func TestOneLeaderAndTheAnswerWakesTheOthers(t *testing.T) {
	dir := privDir(t)
	a, b := open(t, dir), open(t, dir)
	ta, tb := target(t, a, "tcp://10.0.0.5:5432"), target(t, b, "tcp://10.0.0.5:5432")
	other := target(t, b, "icmp://10.0.0.1")
	if !ta.Lead() {
		t.Fatal("the first ADD did not get the lead")
	}
	if tb.Lead() {
		t.Fatal("a second ADD got the lead while the first holds it")
	}
	if !other.Lead() {
		t.Error("another target's lead is taken: names must differ per target")
	}
	select {
	case <-b.Answered():
		t.Fatal("woken before any answer")
	case <-time.After(50 * time.Millisecond):
	}
	ta.Answered()
	select {
	case <-b.Answered():
	case <-time.After(2 * time.Second):
		t.Fatal("the follower was not woken by the leader's answer")
	}
	if !tb.Woken() || other.Woken() {
		t.Error("Woken must say which of b's targets answered: the tcp one, not the icmp one")
	}
	if tb.Woken() {
		t.Error("Woken twice for one answer")
	}
	if !tb.Lead() {
		t.Error("the leader answered and left, but the follower cannot take the lead")
	}
	tb.Answered() // led: wakes, and leaves
	time.Sleep(20 * time.Millisecond)
	drain(a)
	// A follower's answer wakes the others too (the leader's own path may
	// stay closed), and leaves the lead with its holder.
	if !ta.Lead() {
		t.Fatal("nobody leads, yet a cannot take the lead")
	}
	tb.Answered()
	select {
	case <-a.Answered():
	case <-time.After(2 * time.Second):
		t.Error("a follower's answer did not wake the others")
	}
	if tb.Lead() {
		t.Error("a follower's answer released the leader's lead")
	}
}

func drain(n *Node) {
	for {
		select {
		case <-n.Answered():
			time.Sleep(20 * time.Millisecond)
		default:
			return
		}
	}
}

// Nobody but a ringer reads the bell (a reader could take a byte from a
// poller that has yet to look), so a byte is left after each answer: an
// ADD that joins later must not take it for a new answer, and the FIFO
// must not fill (its capacity is 64 KiB), for some kernels wake a pipe's
// pollers only for a write that finds it empty.
func TestBellAfterManyAnswers(t *testing.T) {
	dir := privDir(t)
	a, b := open(t, dir), open(t, dir)
	ta, _ := target(t, a, "k"), target(t, b, "k")
	for range 70_000 {
		ta.wakeFollowers()
	}
	rc, err := ta.bell.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var queued int // TIOCINQ is FIONREAD
	if err := rc.Control(func(fd uintptr) { queued, err = unix.IoctlGetInt(int(fd), unix.TIOCINQ) }); err != nil {
		t.Fatal(err)
	}
	if err != nil || queued > 1 {
		t.Errorf("after 70,000 answers the bell holds %d bytes (%v), want at most 1", queued, err)
	}
	time.Sleep(20 * time.Millisecond)
	drain(b)
	c := open(t, dir)
	target(t, c, "k")
	select {
	case <-c.Answered():
		t.Fatal("an ADD that joined after the answers was woken by them")
	case <-time.After(100 * time.Millisecond):
	}
	ta.wakeFollowers()
	for _, n := range []*Node{b, c} {
		select {
		case <-n.Answered():
		case <-time.After(2 * time.Second):
			t.Fatal("not woken by an answer after 70,000 others")
		}
	}
}

// Close ends the ADD's waits at once: nothing of it lingers in the process
// (the plugin exits, but a CHECK or the CLI goes on), and it wakes no other
// ADD.
func TestCloseEndsTheWaits(t *testing.T) {
	dir := privDir(t)
	before := runtime.NumGoroutine()
	a, b := open(t, dir), open(t, dir)
	target(t, a, "k")
	target(t, a, "j")
	target(t, b, "k")
	start := time.Now()
	a.Close()
	if took := time.Since(start); took > time.Second {
		t.Errorf("Close took %v", took)
	}
	b.Close()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after Close, %d before the Nodes", n, before)
	}
}

func TestCloseReleasesTheLead(t *testing.T) {
	dir := privDir(t)
	a, b := open(t, dir), open(t, dir)
	ta, tb := target(t, a, "k"), target(t, b, "k")
	if !ta.Lead() || tb.Lead() {
		t.Fatal("want a to lead, b to follow")
	}
	a.Close()
	if !tb.Lead() {
		t.Error("the leader closed, the follower cannot take over")
	}
}

func TestSlotMetersTheFollowers(t *testing.T) {
	dir := privDir(t)
	a, b := open(t, dir), open(t, dir)
	ta, tb := target(t, a, "k"), target(t, b, "k")
	now := time.Unix(1000, 0)
	ta.now = func() time.Time { return now }
	tb.now = func() time.Time { return now }
	for _, step := range []struct {
		t    *Target
		at   time.Duration
		want bool
	}{
		{ta, 0, true},
		{tb, 0, false},
		{tb, SlotGap - time.Millisecond, false},
		{tb, SlotGap, true},
		{ta, SlotGap + 10*time.Millisecond, false},
		// A clock stepped back: the slot is free rather than stalled.
		{ta, -time.Hour, true},
	} {
		now = time.Unix(1000, 0).Add(step.at)
		if got := step.t.Slot(); got != step.want {
			t.Errorf("Slot at %v = %v, want %v", step.at, got, step.want)
		}
	}
}

func TestCorruptSlotFileIsOverwritten(t *testing.T) {
	dir := privDir(t)
	a := open(t, dir)
	ta := target(t, a, "k")
	name := filepath.Join(dir, Name(a.netns, "k")+".slot")
	if err := os.WriteFile(name, []byte("garbage\n!"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !ta.Slot() {
		t.Fatal("a corrupt slot file blocked the followers")
	}
	if ta.Slot() {
		t.Error("the slot was not taken after overwriting the corrupt content")
	}
}

func TestRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string) string // returns the dir to Open
		want  string
	}{
		{"directory is a symlink", func(t *testing.T, dir string) string {
			real := filepath.Join(dir, "real")
			os.Mkdir(real, 0o700)
			link := filepath.Join(dir, "link")
			if err := os.Symlink(real, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, "a symlink is refused"},
		{"others may read it", func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "open")
			os.Mkdir(d, 0o700)
			os.Chmod(d, 0o755)
			return d
		}, "mode 0700"},
		{"parent missing", func(t *testing.T, dir string) string {
			return filepath.Join(dir, "no", "such")
		}, "cannot create"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(tc.setup(t, t.TempDir()))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

func TestCreatesAMissingDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "netready")
	open(t, dir)
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm()&0o077 != 0 {
		t.Fatalf("stat %s: %v, %v; want a directory only its owner may use", dir, st.Mode(), err)
	}
}

func TestTargetFileNotRegularIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plant func(path string) error
	}{
		{"symlink", func(p string) error { return os.Symlink("/etc/passwd", p) }},
		{"directory", func(p string) error { return os.Mkdir(p, 0o700) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := privDir(t)
			n := open(t, dir)
			if err := tc.plant(filepath.Join(dir, Name(n.netns, "k")+".lead")); err != nil {
				t.Fatal(err)
			}
			if tg, err := n.Target("k"); err == nil {
				t.Errorf("Target opened %v through a planted %s", tg.lead.Name(), tc.name)
			}
		})
	}
	// The bell must be a FIFO: a symlink is not followed, a regular file or
	// a directory refused.
	for _, tc := range []struct {
		name  string
		plant func(path string) error
	}{
		{"symlink", func(p string) error { return os.Symlink("/etc/passwd", p) }},
		{"directory", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"regular file", func(p string) error { return os.WriteFile(p, nil, 0o600) }},
	} {
		t.Run("bell "+tc.name, func(t *testing.T) {
			dir := privDir(t)
			n := open(t, dir)
			if err := tc.plant(filepath.Join(dir, Name(n.netns, "k")+".bell")); err != nil {
				t.Fatal(err)
			}
			if tg, err := n.Target("k"); err == nil {
				t.Errorf("Target opened %v through a planted %s", tg.bell.Name(), tc.name)
			}
		})
	}
}

// A real leader process killed with SIGKILL: the kernel releases its flock,
// the follower's next Lead takes over.
func TestLeaderKilledTakeover(t *testing.T) {
	if os.Getenv("NR_COORD_HELPER") != "" {
		return
	}
	dir := privDir(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLeader$")
	cmd.Env = append(os.Environ(), "NR_COORD_HELPER="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	buf := make([]byte, 4)
	if _, err := out.Read(buf); err != nil || string(buf[:3]) != "led" {
		t.Fatalf("helper: %q, %v", buf, err)
	}
	n := open(t, dir)
	tg := target(t, n, "k")
	if tg.Lead() {
		t.Fatal("took the lead while the helper holds it")
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if !tg.Lead() {
		t.Error("the leader was killed, but the lead is still held")
	}
}

func TestHelperLeader(t *testing.T) {
	dir := os.Getenv("NR_COORD_HELPER")
	if dir == "" {
		t.Skip("a helper process for TestLeaderKilledTakeover")
	}
	n, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := n.Target("k")
	if err != nil || !tg.Lead() {
		t.Fatal("helper could not lead", err)
	}
	os.Stdout.WriteString("led\n")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	select {
	case <-sig:
	case <-time.After(time.Minute):
	}
}

// A read-only /run/netready (a hardened node, a full tmpfs remounted): Open
// may succeed, but no target can be shared; the caller probes alone.
func TestReadOnlyDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a read-only tmpfs needs root")
	}
	dir := privDir(t)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_RDONLY|syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0700,size=64k"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	n := open(t, dir)
	_, err := n.Target("k")
	if err == nil || !strings.Contains(err.Error(), "read-only file system") {
		t.Errorf("Target on a read-only directory: %v, want an error naming the read-only file system", err)
	}
}
