package testbed_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// TestAddNode: a second node reaches the first node's uplink and the db through the router, on
// its own link, and the first node's path to the db is as before.
func TestAddNode(t *testing.T) {
	testbed.SkipUnlessRoot(t)
	b := testbed.New(t, testbed.Options{BinDir: t.TempDir()}) // no plugin is run: nothing to build
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	n2, err := b.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.AddNode(ctx); err == nil {
		t.Error("a second AddNode succeeded, want an error")
	}
	l, err := b.Node.Listen("tcp", net.JoinHostPort(testbed.NodeUplink.String(), "7946"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan netip.Addr, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
			c.Close()
		}
	}()
	for _, dst := range []string{l.Addr().String(), testbed.DBTCP.String()} {
		c, err := n2.Dial(ctx, "tcp", dst)
		if err != nil {
			t.Fatalf("node2 -> %s: %v", dst, err)
		}
		c.Close()
	}
	if got := <-accepted; got != testbed.Node2Uplink {
		t.Errorf("the first node saw node2 as %v, want %v (routed, not NATed)", got, testbed.Node2Uplink)
	}
	c, err := b.Node.Dial(ctx, "tcp", testbed.DBTCP.String())
	if err != nil {
		t.Fatalf("node -> db with node2 added: %v", err)
	}
	c.Close()
	b.Close()
	if left, _ := testbed.Leftovers(b.Prefix + "-"); len(left) > 0 {
		t.Errorf("netns left after Close: %v", left)
	}
}
