package threadns

import (
	"path/filepath"
	"runtime"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/netready/netready/internal/testns"
)

// statID is what the kernel says of path, the way every other tool names a
// netns: stat(2) following the magic link.
func statID(t *testing.T, path string) ID {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return ID{st.Dev, st.Ino}
}

// Self names the thread's netns as /proc/thread-self/ns/net does, without
// root too (then through netns.Get), and leaves no descriptor open.
func TestSelfIsThreadSelf(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := testns.OpenFDs(t)
	got, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if want := statID(t, "/proc/thread-self/ns/net"); got != want {
		t.Errorf("Self() = %v, /proc/thread-self/ns/net is %v", got, want)
	}
	if after := testns.OpenFDs(t); after != before {
		t.Errorf("open descriptors: %d before, %d after", before, after)
	}
	own, err := IsSelf("/proc/thread-self/ns/net")
	if err != nil || !own {
		t.Errorf("IsSelf(own netns) = %v, %v; want true", own, err)
	}
	own, err = IsSelf(filepath.Join(t.TempDir(), "missing"))
	if err != nil || own {
		t.Errorf("IsSelf(missing path) = %v, %v; want false, nil (as ns.CheckNetNS)", own, err)
	}
}

// On a thread inside another netns, Self names that one (the socket is made
// there), and IsSelf tells the two apart: what coord's table names and the
// CNI_NETNS check rest on.
func TestSelfFollowsTheThread(t *testing.T) {
	_, path := testns.New(t, "threadns")
	node, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if own, err := IsSelf(path); err != nil || own {
		t.Errorf("from the test's netns, IsSelf(%s) = %v, %v; want false", path, own, err)
	}
	h, err := ns.GetNS(path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	err = h.Do(func(ns.NetNS) error {
		inside, err := Self()
		if err != nil {
			return err
		}
		if want := statID(t, path); inside != want {
			t.Errorf("inside %s, Self() = %v; the netns is %v", path, inside, want)
		}
		if inside == node {
			t.Errorf("inside %s, Self() = %v, the same as outside", path, inside)
		}
		if own, err := IsSelf(path); err != nil || !own {
			t.Errorf("inside %s, IsSelf = %v, %v; want true", path, own, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
