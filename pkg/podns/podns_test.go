package podns

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/netready/netready/internal/testns"
)

// addNetNS creates a netns, removed when the test ends, and returns its
// name and path.
func addNetNS(t *testing.T) (name, path string) {
	t.Helper()
	return testns.New(t, "podns")
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	testns.Run(t, "ip", args...)
}

// open is Open, closed when the test ends.
func open(t *testing.T, path string) *NetNS {
	t.Helper()
	n, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func TestOpenErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		path    string
		wantErr string
		as      any
	}{
		{"missing", filepath.Join(t.TempDir(), "missing"), "does not exist", &ns.NSPathNotExistErr{}},
		{"regular file", file, "is not a network namespace", &ns.NSPathNotNSErr{}},
		{"directory", t.TempDir(), "is not a network namespace", &ns.NSPathNotNSErr{}},
		{"procfs file", "/proc/self/status", "is not a network namespace", &ns.NSPathNotNSErr{}},
		{"mount namespace", "/proc/self/ns/mnt", "is not a network namespace", &ns.NSPathNotNSErr{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			n, err := Open(c.path)
			if err == nil {
				n.Close()
				t.Fatalf("Open(%s) succeeded", c.path)
			}
			if want := "netns " + c.path + " " + c.wantErr; err.Error() != want {
				t.Errorf("Open: %q, want %q", err, want)
			}
			if !errors.As(err, c.as) {
				t.Errorf("Open: %v is not a %T", err, c.as)
			}
		})
	}
}

// TestIsBadNetNS: what Open says of a missing path or a file that is no
// netns is the runtime's bad netns; other errors are not.
func TestIsBadNetNS(t *testing.T) {
	file := t.TempDir() + "/not-a-netns"
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, missing := Open(t.TempDir() + "/gone")
	_, notNS := Open(file)
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"missing path", missing, true},
		{"regular file", notNS, true},
		{"wrapped", fmt.Errorf("podcheck: %w", missing), true},
		{"netlink failure", fmt.Errorf("netlink: %w", syscall.ENOBUFS), false},
		{"nil", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsBadNetNS(tc.err); got != tc.want {
				t.Errorf("IsBadNetNS(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestClosed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: enters a network namespace")
	}
	n, err := Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Socket after Close: %v, want net.ErrClosed", err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestOneNamespace shows that the sockets, the netlink view and the watcher
// all reach the opened netns, not the test's: a link made only there is
// seen, and a change made only there wakes the watcher.
func TestOneNamespace(t *testing.T) {
	name, path := addNetNS(t)
	ip(t, "-n", name, "link", "add", "nrv0", "type", "veth", "peer", "name", "nrv1")
	n := open(t, path)
	if err := n.View().LinkUp("nrv0"); err == nil || !strings.Contains(err.Error(), "administratively down") {
		t.Errorf("View().LinkUp(nrv0) = %v, want administratively down (the link exists only in the pod netns)", err)
	}

	// A socket bound to an address that exists only in the pod netns.
	ip(t, "-n", name, "addr", "add", "192.0.2.77/32", "dev", "nrv0")
	fd, err := n.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{192, 0, 2, 77}}); err != nil {
		t.Errorf("bind to the pod netns's 192.0.2.77: %v, want the socket to be in the pod netns", err)
	}

	notify := make(chan struct{}, 1)
	w, err := n.Watch(notify)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	select {
	case <-notify:
		t.Fatal("woke before anything changed")
	case <-time.After(50 * time.Millisecond):
	}
	ip(t, "-n", name, "link", "set", "nrv0", "up")
	ip(t, "-n", name, "link", "set", "nrv1", "up")
	select {
	case <-notify:
	case <-time.After(5 * time.Second):
		t.Fatal("no wake-up after a link came up in the pod netns")
	}
	// Carrier comes through the kernel's linkwatch, a moment later.
	deadline := time.Now().Add(5 * time.Second)
	for n.View().LinkUp("nrv0") != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := n.View().LinkUp("nrv0"); err != nil {
		t.Errorf("View().LinkUp(nrv0) after ip link set up = %v", err)
	}
}

// TestSocketsMadeAhead: stream and datagram sockets come in growing
// batches, each one inside the pod netns and handed out once; raw sockets,
// which receive from the moment they exist, one at a time; and Close
// closes the ones never handed out.
func TestSocketsMadeAhead(t *testing.T) {
	name, path := addNetNS(t)
	ip(t, "-n", name, "link", "add", "nrv0", "type", "veth", "peer", "name", "nrv1")
	ip(t, "-n", name, "addr", "add", "192.0.2.77/32", "dev", "nrv0")
	before := testns.OpenFDs(t)
	n, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	base := testns.OpenFDs(t)
	var handed []int
	defer func() {
		for _, fd := range handed {
			syscall.Close(fd)
		}
	}()
	seen := map[int]bool{}
	get := func(typ, proto int) int {
		t.Helper()
		fd, err := n.Socket(syscall.AF_INET, typ, proto)
		if err != nil {
			t.Fatal(err)
		}
		if seen[fd] {
			t.Fatalf("socket %d handed out twice", fd)
		}
		seen[fd] = true
		handed = append(handed, fd)
		return fd
	}
	// 1 + 2 + 4: seven sockets in three batches, none left over; each binds
	// to an address that only the pod netns has.
	for range 7 {
		fd := get(syscall.SOCK_STREAM, 0)
		if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{192, 0, 2, 77}}); err != nil {
			t.Fatalf("bind to the pod netns's 192.0.2.77: %v, want every socket in the pod netns", err)
		}
	}
	if got := testns.OpenFDs(t) - base; got != 7 {
		t.Errorf("after 7 stream sockets in batches of 1, 2 and 4: %d more descriptors open, want 7", got)
	}
	get(syscall.SOCK_STREAM, 0) // a batch of 8: 7 made ahead
	if got := testns.OpenFDs(t) - base; got != 8+7 {
		t.Errorf("after the 8th stream socket: %d more descriptors open, want 15 (8 handed out, 7 ahead)", got)
	}
	for range 3 {
		get(syscall.SOCK_RAW, syscall.IPPROTO_ICMP)
	}
	if got := testns.OpenFDs(t) - base; got != 11+7 {
		t.Errorf("after 3 raw sockets: %d more descriptors open, want 18 (no raw socket made ahead)", got)
	}
	for _, fd := range handed {
		syscall.Close(fd)
	}
	handed = nil
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if got := testns.OpenFDs(t); got != before {
		t.Errorf("after Close: %d descriptors open, want %d as before Open (the sockets made ahead closed)", got, before)
	}
}

func TestGone(t *testing.T) {
	name, path := addNetNS(t)
	n := open(t, path)
	if n.Gone() || n.Removed() != nil {
		t.Fatalf("Gone() %v, Removed() %v right after Open", n.Gone(), n.Removed())
	}
	ip(t, "netns", "del", name)
	if !n.Gone() {
		t.Error("Gone() false after ip netns del")
	}
	if err := n.Removed(); !errors.Is(err, ErrRemoved) || !strings.Contains(err.Error(), path) {
		t.Errorf("Removed() = %v, want ErrRemoved naming %s", err, path)
	}
	// The namespace lives on in netready's own sockets: the view still works.
	if err := n.View().LinkUp("lo"); err != nil && !strings.Contains(err.Error(), "administratively down") {
		t.Errorf("View() after removal: %v", err)
	}
}

// BenchmarkSocket measures what entering the pod netns adds to an attempt.
func BenchmarkSocket(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: enters a network namespace")
	}
	n, err := Open("/proc/self/ns/net")
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	for b.Loop() {
		fd, err := n.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
		if err != nil {
			b.Fatal(err)
		}
		syscall.Close(fd)
	}
}
