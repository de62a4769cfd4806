package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netready/netready/internal/testns"
)

// The addresses of every bed (see the package comment).
var (
	NodeUplink   = netip.MustParseAddr("192.0.2.2") // node's "uplink"
	RouterUplink = netip.MustParseAddr("192.0.2.1") // router's "to-node": the node's default gateway
	RouterDB     = netip.MustParseAddr("198.51.100.1")
	DBAddr       = netip.MustParseAddr("198.51.100.10")
	UplinkNet    = netip.MustParsePrefix("192.0.2.0/24")
	DBNet        = netip.MustParsePrefix("198.51.100.0/24")

	NodeUplink6   = netip.MustParseAddr("2001:db8:1::2")
	RouterUplink6 = netip.MustParseAddr("2001:db8:1::1")
	RouterDB6     = netip.MustParseAddr("2001:db8:2::1")
	DBAddr6       = netip.MustParseAddr("2001:db8:2::10")
	UplinkNet6    = netip.MustParsePrefix("2001:db8:1::/64")
	DBNet6        = netip.MustParsePrefix("2001:db8:2::/64")

	// A second node (AddNode) is on its own link to the router, in RFC 5737's third range.
	Node2Uplink   = netip.MustParseAddr("203.0.113.2") // node2's "uplink"
	RouterUplink2 = netip.MustParseAddr("203.0.113.1") // router's "to-node2": node2's default gateway
	Uplink2Net    = netip.MustParsePrefix("203.0.113.0/24")

	ClusterCIDR  = netip.MustParsePrefix("10.42.0.0/16") // FLANNEL_NETWORK
	PodCIDR      = netip.MustParsePrefix("10.42.0.0/24") // FLANNEL_SUBNET
	PodGateway   = netip.MustParseAddr("10.42.0.1")      // cni0, set by the bridge plugin
	ClusterCIDR6 = netip.MustParsePrefix("fd42::/56")    // FLANNEL_IPV6_NETWORK (DualStack)
	PodCIDR6     = netip.MustParsePrefix("fd42::/64")    // FLANNEL_IPV6_SUBNET (DualStack)
	PodGateway6  = netip.MustParseAddr("fd42::1")
)

// Ports of the db's servers.
const (
	TCPPort  = 5432 // accepts and closes
	HTTPPort = 80   // 200 on /healthz
	DNSPort  = 53   // UDP; A and AAAA for any name
)

// Targets on the db, as addresses and as netready probe URLs.
var (
	DBTCP   = netip.AddrPortFrom(DBAddr, TCPPort)
	DBTCP6  = netip.AddrPortFrom(DBAddr6, TCPPort)
	DBHTTP  = netip.AddrPortFrom(DBAddr, HTTPPort)
	DBDNS   = netip.AddrPortFrom(DBAddr, DNSPort)
	ProbeDB = "tcp://" + DBTCP.String()
)

// FlannelMTU is the pod MTU K3s's VXLAN backend writes to subnet.env (1500 - 50).
const FlannelMTU = 1450

// Options shape a bed. The zero value is K3s's IPv4 node with plugins built by the bed.
type Options struct {
	// BinDir holds the built plugins. Empty: Build Plugins into the bed's own dir (removed on Close).
	BinDir string
	// Plugins to build when BinDir is empty. Default K3sPlugins.
	Plugins []string
	// DualStack adds FLANNEL_IPV6_NETWORK/SUBNET to subnet.env, so pods also get fd42::/64.
	DualStack bool
	// PluginStderr receives the plugins' stderr (netready's log records when it has no logFile).
	// Default os.Stderr.
	PluginStderr io.Writer
}

// Bed is one simulated node with its router and db. Its methods are safe for concurrent use.
type Bed struct {
	Prefix string // unique per bed and process: nr-<pid>-<n>; every netns name starts with it
	Dir    string // the bed's temp dir; everything the bed writes to disk is under it
	BinDir string // CNI_PATH

	Node, Router, DB *Netns
	Node2            *Netns // nil until AddNode

	SubnetEnv  string // flannel's subnet.env
	CacheDir   string // libcni's cache (results, for CHECK/DEL/GC)
	FlannelDir string // flannel's dataDir (saved delegate configs)
	IPAMDir    string // host-local's dataDir (leased addresses)
	DualStack  bool

	cni     *libcni.CNIConfig
	servers *servers
	ctx     context.Context // canceled by Close: stops pending OpenAt timers
	cancel  context.CancelFunc
	timers  sync.WaitGroup

	mu sync.Mutex
	// guarded by mu
	pods   []*Pod
	npods  int
	closed bool
}

var bedCount atomic.Int64

// Start builds a bed: temp dir, plugins (unless opts.BinDir), the node, router and db netns with
// their links, addresses, routes and sysctls, subnet.env, and the db's servers. On error,
// whatever was made is removed. The caller must Close the bed.
func Start(ctx context.Context, opts Options) (_ *Bed, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("testbed: must run as root (it creates network namespaces, veths and nftables rules)")
	}
	prefix := fmt.Sprintf("nr-%d-%d", os.Getpid(), bedCount.Add(1))
	dir, err := os.MkdirTemp("", prefix+"-")
	if err != nil {
		return nil, err
	}
	b := &Bed{
		Prefix:     prefix,
		Dir:        dir,
		BinDir:     opts.BinDir,
		SubnetEnv:  filepath.Join(dir, "subnet.env"),
		CacheDir:   filepath.Join(dir, "cni-cache"),
		FlannelDir: filepath.Join(dir, "flannel"),
		IPAMDir:    filepath.Join(dir, "ipam"),
		DualStack:  opts.DualStack,
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			err = errors.Join(err, b.Close())
		}
	}()

	if b.BinDir == "" {
		b.BinDir = filepath.Join(dir, "bin")
		if err := Build(b.BinDir, opts.Plugins...); err != nil {
			return b, err
		}
	}
	stderr := opts.PluginStderr
	if stderr == nil {
		stderr = os.Stderr
	}
	b.cni = libcni.NewCNIConfigWithCacheDir([]string{b.BinDir}, b.CacheDir, &invoke.DefaultExec{
		RawExec:       &invoke.RawExec{Stderr: stderr},
		PluginDecoder: version.PluginDecoder{},
	})

	if err := os.WriteFile(b.SubnetEnv, []byte(b.subnetEnv()), 0o644); err != nil {
		return b, err
	}
	if b.Node, err = newNetns(ctx, prefix+"-node"); err != nil {
		return b, err
	}
	if b.Router, err = newNetns(ctx, prefix+"-router"); err != nil {
		return b, err
	}
	if b.DB, err = newNetns(ctx, prefix+"-db"); err != nil {
		return b, err
	}
	if err := b.wire(ctx); err != nil {
		return b, fmt.Errorf("testbed: wiring %s: %w", prefix, err)
	}
	if b.DualStack {
		if err := b.settleIPv6(ctx); err != nil {
			return b, fmt.Errorf("testbed: %s: %w", prefix, err)
		}
	}
	if b.servers, err = startServers(b.DB); err != nil {
		return b, fmt.Errorf("testbed: db servers: %w", err)
	}
	return b, nil
}

// subnetEnv is what flanneld would write for this node with K3s's defaults.
func (b *Bed) subnetEnv() string {
	s := "FLANNEL_NETWORK=" + ClusterCIDR.String() + "\n" +
		"FLANNEL_SUBNET=" + netip.PrefixFrom(PodGateway, PodCIDR.Bits()).String() + "\n"
	if b.DualStack {
		s += "FLANNEL_IPV6_NETWORK=" + ClusterCIDR6.String() + "\n" +
			"FLANNEL_IPV6_SUBNET=" + netip.PrefixFrom(PodGateway6, PodCIDR6.Bits()).String() + "\n"
	}
	return s + "FLANNEL_MTU=" + strconv.Itoa(FlannelMTU) + "\nFLANNEL_IPMASQ=true\n"
}

// wire builds the underlay. IPv6 DAD is off in all three netns (also for links made later, such as
// cni0), so that addresses are usable at once and tests do not wait a second for nothing.
func (b *Bed) wire(ctx context.Context) error {
	for _, n := range []*Netns{b.Node, b.Router, b.DB} {
		for key, value := range map[string]string{
			"net/ipv6/conf/all/accept_dad":     "0",
			"net/ipv6/conf/default/accept_dad": "0",
		} {
			if err := n.Sysctl(key, value); err != nil {
				return err
			}
		}
	}
	for _, n := range []*Netns{b.Node, b.Router} {
		for _, key := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
			if err := n.Sysctl(key, "1"); err != nil {
				return err
			}
		}
	}

	node, router, db := b.Node, b.Router, b.DB
	steps := []struct {
		ns   *Netns
		args []string
	}{
		{node, []string{"link", "set", "lo", "up"}},
		{router, []string{"link", "set", "lo", "up"}},
		{db, []string{"link", "set", "lo", "up"}},
		// Both ends are created directly in their netns: nothing ever appears in the root netns.
		{node, []string{"link", "add", "uplink", "type", "veth", "peer", "name", "to-node", "netns", router.Name}},
		{router, []string{"link", "add", "to-db", "type", "veth", "peer", "name", "eth0", "netns", db.Name}},

		{node, addr(NodeUplink, UplinkNet, "uplink")},
		{node, addr(NodeUplink6, UplinkNet6, "uplink")},
		{router, addr(RouterUplink, UplinkNet, "to-node")},
		{router, addr(RouterUplink6, UplinkNet6, "to-node")},
		{router, addr(RouterDB, DBNet, "to-db")},
		{router, addr(RouterDB6, DBNet6, "to-db")},
		{db, addr(DBAddr, DBNet, "eth0")},
		{db, addr(DBAddr6, DBNet6, "eth0")},

		{node, []string{"link", "set", "uplink", "up"}},
		{router, []string{"link", "set", "to-node", "up"}},
		{router, []string{"link", "set", "to-db", "up"}},
		{db, []string{"link", "set", "eth0", "up"}},

		{node, []string{"route", "add", "default", "via", RouterUplink.String()}},
		{node, []string{"-6", "route", "add", "default", "via", RouterUplink6.String()}},
		{router, []string{"route", "add", ClusterCIDR.String(), "via", NodeUplink.String()}},
		{router, []string{"-6", "route", "add", ClusterCIDR6.String(), "via", NodeUplink6.String()}},
		{db, []string{"route", "add", "default", "via", RouterDB.String()}},
		{db, []string{"-6", "route", "add", "default", "via", RouterDB6.String()}},
	}
	for _, s := range steps {
		if _, err := s.ns.IP(ctx, s.args...); err != nil {
			return err
		}
	}
	return nil
}

// AddNode adds a second node netns (<prefix>-node2) for a second K3s node: its "uplink"
// (203.0.113.2/24) is a veth to the router's "to-node2" (203.0.113.1), its default route goes via
// the router, forwarding is on. The router routes between the two nodes' uplinks (both directly
// connected), so the nodes reach each other (flannel's VXLAN) and node2 reaches the db; the
// cluster CIDR stays routed to the first node (a second node's pods leave it SNATed to its
// uplink address, as flannel masquerades traffic that leaves the cluster). IPv4 only. The bed's
// own topology is unchanged; Close removes node2 with the rest.
func (b *Bed) AddNode(ctx context.Context) (*Netns, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errors.New("testbed: AddNode on a closed bed")
	}
	if b.Node2 != nil {
		return nil, errors.New("testbed: the bed already has a second node")
	}
	n, err := newNetns(ctx, b.Prefix+"-node2")
	if err != nil {
		return nil, err
	}
	b.Node2 = n
	for key, value := range map[string]string{"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/accept_dad": "0", "net/ipv6/conf/default/accept_dad": "0"} {
		if err := n.Sysctl(key, value); err != nil {
			return nil, err
		}
	}
	router := b.Router
	for _, s := range []struct {
		ns   *Netns
		args []string
	}{
		{n, []string{"link", "set", "lo", "up"}},
		{n, []string{"link", "add", "uplink", "type", "veth", "peer", "name", "to-node2", "netns", router.Name}},
		{n, addr(Node2Uplink, Uplink2Net, "uplink")},
		{router, addr(RouterUplink2, Uplink2Net, "to-node2")},
		{n, []string{"link", "set", "uplink", "up"}},
		{router, []string{"link", "set", "to-node2", "up"}},
		{n, []string{"route", "add", "default", "via", RouterUplink2.String()}},
	} {
		if _, err := s.ns.IP(ctx, s.args...); err != nil {
			return nil, fmt.Errorf("testbed: wiring %s: %w", n.Name, err)
		}
	}
	return n, nil
}

func addr(a netip.Addr, net netip.Prefix, dev string) []string {
	args := []string{"addr", "add", netip.PrefixFrom(a, net.Bits()).String(), "dev", dev}
	if a.Is6() {
		args = append(args, "nodad")
	}
	return args
}

// Close stops the servers and pending timers, removes every netns of the bed (pods included) and
// its dir. It is safe to call more than once and after a failed Start.
func (b *Bed) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	pods := b.pods
	b.mu.Unlock()

	var errs []error
	b.cancel()
	b.timers.Wait()
	if b.servers != nil {
		errs = append(errs, b.servers.close())
	}
	for _, p := range pods {
		errs = append(errs, p.Netns.remove())
	}
	for _, n := range []*Netns{b.Node2, b.DB, b.Router, b.Node} {
		if n != nil {
			errs = append(errs, n.remove())
		}
	}
	errs = append(errs, os.RemoveAll(b.Dir))
	return errors.Join(errs...)
}

// Leftovers lists the named netns whose name starts with prefix: a bed's Prefix+"-" for its own,
// "nr-" for those of every bed of every process.
func Leftovers(prefix string) ([]string, error) {
	entries, err := os.ReadDir(NetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if len(e.Name()) >= len(prefix) && e.Name()[:len(prefix)] == prefix {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// wait is a helper for OpenAt: sleep until at, or return false when the bed closes first.
func (b *Bed) wait(at time.Time) bool {
	t := time.NewTimer(time.Until(at))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-b.ctx.Done():
		return false
	}
}

// RemoveStale removes the netns and temp dirs left by beds of processes that no longer exist
// (killed, or stopped by `go test -timeout`, before their cleanup ran) and returns their names.
// Those of live processes, including this one, are left alone (testns.Stale).
func RemoveStale() ([]string, error) {
	removed, err := testns.RemoveStale()
	errs := []error{err}
	if entries, err := os.ReadDir(os.TempDir()); err == nil {
		for _, e := range entries {
			if e.IsDir() && testns.Stale(e.Name()) {
				path := filepath.Join(os.TempDir(), e.Name())
				if err := os.RemoveAll(path); err != nil {
					errs = append(errs, err)
					continue
				}
				removed = append(removed, path)
			}
		}
	}
	return removed, errors.Join(errs...)
}

// settleIPv6 waits until IPv6 runs on every link of the node, router and db: each has its
// link-local address, which addrconf adds only once it has seen the link's carrier. The kernel
// reports carrier changes through linkwatch, at most once a second, so for up to a second after
// wiring the router may not answer neighbour solicitations on to-node, and the node's first IPv6
// packet towards the db waits a full second for the retransmission (IPv4's ARP is not affected).
// A real node's uplink has been up for long; the bed's must be too before a test measures IPv6.
func (b *Bed) settleIPv6(ctx context.Context) error {
	links := map[*Netns][]string{b.Node: {"uplink"}, b.Router: {"to-node", "to-db"}, b.DB: {"eth0"}}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		var missing []string
		for n, names := range links {
			h, err := n.Netlink()
			if err != nil {
				return err
			}
			for _, name := range names {
				addrs, err := linkLocal(h, name)
				if err != nil {
					h.Delete()
					return err
				}
				if !addrs {
					missing = append(missing, n.Name+"/"+name)
				}
			}
			h.Delete()
		}
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("IPv6 link-local addresses not ready on %v: %w", missing, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// linkLocal reports whether link name has a usable (not tentative) IPv6 link-local address.
func linkLocal(h *netlink.Handle, name string) (bool, error) {
	link, err := h.LinkByName(name)
	if err != nil {
		return false, err
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		return false, err
	}
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
			return true, nil
		}
	}
	return false, nil
}
