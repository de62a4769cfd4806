package k3s

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/netready/netready/e2e/testbed"
)

// podFaultTable is the nf_tables table of PodFault in the node netns.
const podFaultTable = "netready_e2e_podfault"

// PodFault drops, in the node's forward hook, what pods send to the db's subnet unless the
// pod's IP was let through: each pod's path opens at its own moment, so that several pods can be
// in flight at once. It works before flannel's SNAT (postrouting), where pods are still told
// apart by their own IPs; the pod sees what the router's drop gives it: no answer.
type PodFault struct {
	node *testbed.Netns
	mu   sync.Mutex // one nf_tables change at a time: NftCommitTime reads the netns's commits
}

// NewPodFault installs the table (with an empty set: every pod blocked).
func NewPodFault(ctx context.Context, node *testbed.Netns) (*PodFault, error) {
	f := &PodFault{node: node}
	script := fmt.Sprintf(`table inet %[1]s
delete table inet %[1]s
table inet %[1]s {
	set open {
		type ipv4_addr
	}
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		ip daddr %[2]s ip saddr != @open drop
	}
}
`, podFaultTable, testbed.DBNet)
	if _, err := node.ExecInput(ctx, script, "nft", "-f", "-"); err != nil {
		return nil, fmt.Errorf("pod fault: %w", err)
	}
	return f, nil
}

// Open lets ip through and returns when the kernel committed it.
func (f *PodFault) Open(ip netip.Addr) (time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.node.NftCommitTime(func() error {
		_, err := f.node.Exec(context.Background(), "nft", "add", "element", "inet", podFaultTable, "open", "{ "+ip.String()+" }")
		return err
	})
}

// Close blocks ip again (its address may be leased to a later pod).
func (f *PodFault) Close(ip netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err := f.node.Exec(context.Background(), "nft", "delete", "element", "inet", podFaultTable, "open", "{ "+ip.String()+" }")
	return err
}

// Remove deletes the table.
func (f *PodFault) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err := f.node.Exec(context.Background(), "nft", "delete", "table", "inet", podFaultTable)
	return err
}

// netnsDir is where containerd pins the pods' netns (cni-<uuid>).
const netnsDir = "/var/run/netns"

// podNetns is a pod's netns found from its host-side veth.
type podNetns struct {
	Path  string
	Inode uint64 // what /proc/<pid>/ns/net of the pod's processes links to
	IP    netip.Addr
}

// findPodNetns finds the pod netns (cni-* under /var/run/netns) whose eth0's peer is the node's
// veth vethIndex, and waits until eth0 has its IPv4 address (the bridge plugin creates both ends,
// then host-local's address follows within milliseconds).
func findPodNetns(vethIndex int, limit time.Duration) (podNetns, error) {
	deadline := time.Now().Add(limit)
	for {
		entries, _ := os.ReadDir(netnsDir)
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), "cni-") {
				continue
			}
			p := filepath.Join(netnsDir, e.Name())
			ip, ok := eth0Peer(p, vethIndex)
			if !ok {
				continue
			}
			if ip.IsValid() {
				var st syscall.Stat_t
				if err := syscall.Stat(p, &st); err != nil {
					return podNetns{}, err
				}
				return podNetns{Path: p, Inode: st.Ino, IP: ip}, nil
			}
		}
		if time.Now().After(deadline) {
			return podNetns{}, fmt.Errorf("no pod netns under %s with eth0 peered to ifindex %d and an IPv4 address within %v", netnsDir, vethIndex, limit)
		}
		time.Sleep(3 * time.Millisecond)
	}
}

// eth0Peer reports whether the netns at path has an eth0 whose peer is vethIndex, and eth0's
// first IPv4 address (invalid while there is none).
func eth0Peer(path string, vethIndex int) (netip.Addr, bool) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return netip.Addr{}, false
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return netip.Addr{}, false
	}
	defer nl.Delete()
	link, err := nl.LinkByName("eth0")
	if err != nil || link.Attrs().ParentIndex != vethIndex {
		return netip.Addr{}, false
	}
	addrs, err := nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil || len(addrs) == 0 {
		return netip.Addr{}, true
	}
	a, _ := netip.AddrFromSlice(addrs[0].IP.To4())
	return a, true
}

// AppWatch reports when the app image's /app (not the init loop, -init) starts in a given
// netns, by polling /proc every 2 ms while someone waits: within a few ms of the container's
// start. One poller serves every waiter, so several pods in flight cost one scan.
type AppWatch struct {
	mu sync.Mutex
	// guarded by mu
	waiters map[uint64]chan time.Time
	running bool
}

// Wait returns a channel that receives the moment an app process was first seen in the netns
// with the given inode.
func (w *AppWatch) Wait(inode uint64) <-chan time.Time {
	c := make(chan time.Time, 1)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.waiters == nil {
		w.waiters = map[uint64]chan time.Time{}
	}
	w.waiters[inode] = c
	if !w.running {
		w.running = true
		go w.poll()
	}
	return c
}

// Forget drops a waiter that gave up.
func (w *AppWatch) Forget(inode uint64) {
	w.mu.Lock()
	delete(w.waiters, inode)
	w.mu.Unlock()
}

func (w *AppWatch) poll() {
	for {
		w.mu.Lock()
		if len(w.waiters) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		want := make(map[uint64]bool, len(w.waiters))
		for ino := range w.waiters {
			want[ino] = true
		}
		w.mu.Unlock()
		for ino, at := range scanApps(want) {
			w.mu.Lock()
			if c, ok := w.waiters[ino]; ok {
				c <- at
				delete(w.waiters, ino)
			}
			w.mu.Unlock()
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// scanApps returns, for each netns inode in want that has an app process, the time it was seen.
func scanApps(want map[uint64]bool) map[uint64]time.Time {
	found := map[uint64]time.Time{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		link, err := os.Readlink("/proc/" + e.Name() + "/ns/net")
		if err != nil {
			continue
		}
		ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "net:["), "]"), 10, 64)
		if err != nil || !want[ino] {
			continue
		}
		c, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.HasPrefix(string(c), "/app\x00") && !strings.Contains(string(c), "-init") {
			found[ino] = time.Now()
		}
	}
	return found
}

// errNoOpening: a pod ran but no opening was recorded for its IP.
var errNoOpening = errors.New("no opening recorded for the pod's IP")
