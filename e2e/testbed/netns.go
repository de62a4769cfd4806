package testbed

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/netready/netready/internal/testns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NetnsDir is where `ip netns` keeps named network namespaces.
const NetnsDir = testns.Dir

// Netns is a named network namespace made by the bed (`ip netns add`).
type Netns struct {
	Name string // as `ip netns list` shows it
	Path string // NetnsDir/Name: what CNI_NETNS carries
}

func newNetns(ctx context.Context, name string) (*Netns, error) {
	path, err := testns.Add(ctx, name)
	if err != nil {
		return nil, err
	}
	return &Netns{Name: name, Path: path}, nil
}

// remove unmounts the netns. The kernel frees it, and destroys its virtual links (veths, bridges),
// once the last socket or process in it is gone.
func (n *Netns) remove() error { return testns.Delete(n.Name) }

// Do runs fn on an OS thread locked into the netns (ns.Do): sockets fn creates and processes it
// starts belong to the netns. fn must not expect goroutines it starts to be in the netns.
func (n *Netns) Do(fn func() error) error {
	return ns.WithNetNSPath(n.Path, func(ns.NetNS) error { return fn() })
}

// Exec runs a command in the netns with `ip netns exec` and returns its combined output.
func (n *Netns) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	return run(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// ExecInput is Exec with stdin.
func (n *Netns) ExecInput(ctx context.Context, stdin string, name string, args ...string) ([]byte, error) {
	return runInput(ctx, stdin, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// IP runs `ip -n <netns> args...`.
func (n *Netns) IP(ctx context.Context, args ...string) ([]byte, error) {
	return run(ctx, "ip", append([]string{"-n", n.Name}, args...)...)
}

// Dial connects from a fresh socket created inside the netns (network "tcp", "udp", ...). The
// deadline comes from ctx.
func (n *Netns) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Listen creates a listener inside the netns; it keeps that netns wherever it is served from.
func (n *Netns) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// ListenPacket is Listen for packet sockets (udp).
func (n *Netns) ListenPacket(network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.Do(func() error {
		var err error
		pc, err = net.ListenPacket(network, address)
		return err
	})
	return pc, err
}

// Netlink returns a netlink handle bound to the netns, for reading or changing its links,
// addresses and routes without entering it. The caller deletes it.
func (n *Netns) Netlink() (*netlink.Handle, error) {
	h, err := netns.GetFromPath(n.Path)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", n.Name, err)
	}
	defer h.Close()
	return netlink.NewHandleAt(h)
}

// Sysctl writes value to /proc/sys/<key> (key with slashes, e.g. "net/ipv4/ip_forward") as seen
// from inside the netns: /proc/sys/net is per netns, resolved by the opening thread.
func (n *Netns) Sysctl(key, value string) error {
	return n.Do(func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
}

var run, runInput = testns.Command, testns.CommandInput
