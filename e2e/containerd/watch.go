package containerd

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netready/netready/e2e/testbed"
)

// VethEvent is a pod's host-side veth appearing in the node netns.
type VethEvent struct {
	At   time.Time // when the RTM_NEWLINK notification was read
	Name string
}

// VethWatcher reports each new veth in a node netns: the bridge plugin creating a pod's
// interface, the first step of its ADD (the address, routes and the rest of the chain follow
// within milliseconds). It is the tests' clock for "the pod's network is set up", read from the
// kernel without touching the chain.
type VethWatcher struct {
	events chan VethEvent
	done   chan struct{}
	ended  chan struct{}
}

// WatchVeths subscribes to link notifications of bed's node netns. Close it.
func WatchVeths(bed *testbed.Bed) (*VethWatcher, error) {
	h, err := netns.GetFromPath(bed.Node.Path)
	if err != nil {
		return nil, err
	}
	defer h.Close() // the subscription holds its own socket in the netns
	updates := make(chan netlink.LinkUpdate, 64)
	w := &VethWatcher{events: make(chan VethEvent, 64), done: make(chan struct{}), ended: make(chan struct{})}
	err = netlink.LinkSubscribeWithOptions(updates, w.done, netlink.LinkSubscribeOptions{
		Namespace:     &h,
		ErrorCallback: func(error) {},
	})
	if err != nil {
		return nil, fmt.Errorf("subscribing to links in %s: %w", bed.Node.Name, err)
	}
	go func() {
		defer close(w.ended)
		seen := map[int32]bool{} // ifindex of veths already reported
		for u := range updates {
			at := time.Now()
			if u.Link == nil || u.Link.Type() != "veth" || u.Attrs().Name == "uplink" {
				continue
			}
			switch u.Header.Type {
			case unix.RTM_DELLINK:
				delete(seen, u.Index)
			case unix.RTM_NEWLINK:
				if seen[u.Index] {
					continue // a change (master, up) of a veth already reported
				}
				seen[u.Index] = true
				select {
				case w.events <- VethEvent{At: at, Name: u.Attrs().Name}:
				default: // nobody is waiting; Drain would drop it anyway
				}
			}
		}
	}()
	return w, nil
}

// Drain drops the events not yet read.
func (w *VethWatcher) Drain() {
	for {
		select {
		case <-w.events:
		default:
			return
		}
	}
}

// Next waits for the next new veth.
func (w *VethWatcher) Next(ctx context.Context) (VethEvent, error) {
	select {
	case e := <-w.events:
		return e, nil
	case <-ctx.Done():
		return VethEvent{}, fmt.Errorf("no new veth in the node netns: %w", ctx.Err())
	}
}

// Close ends the subscription and waits (a little) for its reader, whose socket keeps the
// node netns alive.
func (w *VethWatcher) Close() {
	close(w.done)
	select {
	case <-w.ended:
	case <-time.After(5 * time.Second):
	}
}
