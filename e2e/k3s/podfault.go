package k3s

import (
	"errors"
	"fmt"
	"net"
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
	"golang.org/x/sys/unix"

	"github.com/netready/netready/e2e/testbed"
)

// The routing table and rule priorities of PodFault in the node netns (the main table's rule
// is 32766; these come first).
const (
	podFaultTable    = 4242
	podFaultOpenPref = 30050 // from <pod IP> lookup main: that pod's path is open
	podFaultDropPref = 30100 // from the cluster CIDR to the db's subnet lookup 4242: a blackhole
)

// PodFault black-holes, in the node's routing, what pods send to the db's subnet unless the
// pod's IP was let through: each pod's path opens at its own moment, so that several pods can be
// in flight at once. Policy routing sees the pod's own source IP (flannel's SNAT comes after
// it); a blackhole route discards silently, so the pod gets no answer, as from the router's
// drop. Opening is one netlink call (an ip rule), tens of microseconds: no process to start.
type PodFault struct {
	mu sync.Mutex
	// guarded by mu
	h *netlink.Handle
}

// NewPodFault installs the blackhole (every pod blocked).
func NewPodFault(node *testbed.Netns) (*PodFault, error) {
	h, err := node.Netlink()
	if err != nil {
		return nil, err
	}
	f := &PodFault{h: h}
	f.removeLocked() // a killed run's leftovers (the netns is normally new)
	if err := h.RouteReplace(&netlink.Route{Dst: prefixNet(testbed.DBNet), Type: unix.RTN_BLACKHOLE, Table: podFaultTable}); err != nil {
		h.Delete()
		return nil, fmt.Errorf("pod fault: blackhole route in table %d: %w", podFaultTable, err)
	}
	r := netlink.NewRule()
	r.Priority, r.Table, r.Src, r.Dst = podFaultDropPref, podFaultTable, prefixNet(testbed.ClusterCIDR), prefixNet(testbed.DBNet)
	if err := h.RuleAdd(r); err != nil {
		f.removeLocked()
		h.Delete()
		return nil, fmt.Errorf("pod fault: rule to table %d: %w", podFaultTable, err)
	}
	return f, nil
}

func (f *PodFault) openRule(ip netip.Addr) *netlink.Rule {
	r := netlink.NewRule()
	r.Priority, r.Table, r.Src = podFaultOpenPref, unix.RT_TABLE_MAIN, prefixNet(netip.PrefixFrom(ip, ip.BitLen()))
	return r
}

// Open lets ip through and returns when the rule was in place (the netlink call's answer).
func (f *PodFault) Open(ip netip.Addr) (time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.h.RuleAdd(f.openRule(ip)); err != nil {
		return time.Time{}, fmt.Errorf("pod fault: opening %s: %w", ip, err)
	}
	return time.Now(), nil
}

// Close blocks ip again (its address may be leased to a later pod).
func (f *PodFault) Close(ip netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.h.RuleDel(f.openRule(ip))
}

// Remove deletes the rules and the blackhole.
func (f *PodFault) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.removeLocked()
	f.h.Delete()
	return err
}

func (f *PodFault) removeLocked() error {
	rules, err := f.h.RuleList(netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range rules {
		if r.Priority == podFaultOpenPref || r.Priority == podFaultDropPref {
			if err := f.h.RuleDel(&r); err != nil {
				errs = append(errs, err)
			}
		}
	}
	err = f.h.RouteDel(&netlink.Route{Dst: prefixNet(testbed.DBNet), Type: unix.RTN_BLACKHOLE, Table: podFaultTable})
	if err != nil && !errors.Is(err, unix.ESRCH) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// netnsDir is where containerd pins the pods' netns (cni-<uuid>).
const netnsDir = "/var/run/netns"

// podNetns is a pod's netns found from its host-side veth.
type podNetns struct {
	Path  string
	Inode uint64 // what /proc/<pid>/ns/net of the pod's processes links to
	IP    netip.Addr
}

// findPodNetns finds the pod netns (cni-* under /var/run/netns) whose eth0's peer is the veth
// vethIndex of the node netns at nodePath, and waits until eth0 has its IPv4 address (the bridge
// plugin creates both ends, then host-local's address follows within milliseconds). The peer is
// checked by index and by netns (eth0's link-netnsid is the node's), since other pods' netns on
// the machine (other tiers' nodes) may have a peer with the same index in their own node.
func findPodNetns(nodePath string, vethIndex int, limit time.Duration) (podNetns, error) {
	node, err := netns.GetFromPath(nodePath)
	if err != nil {
		return podNetns{}, err
	}
	defer node.Close()
	deadline := time.Now().Add(limit)
	for {
		entries, _ := os.ReadDir(netnsDir)
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), "cni-") {
				continue
			}
			p := filepath.Join(netnsDir, e.Name())
			ip, ok := eth0Peer(p, node, vethIndex)
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

// eth0Peer reports whether the netns at path has an eth0 whose peer is vethIndex in node, and
// eth0's first IPv4 address (invalid while there is none).
func eth0Peer(path string, node netns.NsHandle, vethIndex int) (netip.Addr, bool) {
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
	if id, err := nl.GetNetNsIdByFd(int(node)); err != nil || id != link.Attrs().NetNsID {
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
	testbed.Pids(func(_ int, dir string) bool {
		link, err := os.Readlink(filepath.Join(dir, "ns", "net"))
		if err != nil {
			return false
		}
		ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "net:["), "]"), 10, 64)
		if err != nil || !want[ino] {
			return false
		}
		if c := testbed.ProcCmdline(dir); strings.HasPrefix(c, "/app\x00") && !strings.Contains(c, "-init") {
			found[ino] = time.Now()
		}
		return false
	})
	return found
}

// errNoOpening: a pod ran but no opening was recorded for its IP.
var errNoOpening = errors.New("no opening recorded for the pod's IP")
