package k3s

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// VethWatch reports the pods' host-side veths as the bridge plugin creates them in the node
// netns: the moment "the pod's network is set up" (its address, routes and the rest of the
// chain follow within milliseconds), from netlink notifications, not polling.
type VethWatch struct {
	done chan struct{}
	once sync.Once
	mu   sync.Mutex
	// guarded by mu
	waiters []chan time.Time
	subs    []chan Veth
}

// Veth is a pod's host-side veth as it appeared in the node netns.
type Veth struct {
	Index int // its ifindex in the node netns (the pod's eth0 has it as its peer)
	Name  string
	At    time.Time // when the notification arrived
}

// WatchVeths subscribes to link notifications in the node netns.
func (n *Node) WatchVeths() (*VethWatch, error) {
	h, err := netns.GetFromPath(n.Bed.Node.Path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	w := &VethWatch{done: make(chan struct{})}
	ch := make(chan netlink.LinkUpdate, 64)
	if err := netlink.LinkSubscribeWithOptions(ch, w.done, netlink.LinkSubscribeOptions{Namespace: &h}); err != nil {
		return nil, fmt.Errorf("subscribing to links in %s: %w", n.Bed.Node.Name, err)
	}
	seen := map[int]bool{}
	go func() {
		for u := range ch {
			at := time.Now()
			if u.Header.Type != 16 /* RTM_NEWLINK */ || u.Link == nil || u.Link.Type() != "veth" || !strings.HasPrefix(u.Link.Attrs().Name, "veth") {
				continue
			}
			if seen[u.Link.Attrs().Index] {
				continue
			}
			seen[u.Link.Attrs().Index] = true
			w.mu.Lock()
			ws := w.waiters
			w.waiters = nil
			subs := w.subs
			w.mu.Unlock()
			for _, c := range ws {
				c <- at
			}
			v := Veth{Index: u.Link.Attrs().Index, Name: u.Link.Attrs().Name, At: at}
			for _, c := range subs {
				select {
				case c <- v:
				default: // a subscriber that fell 256 veths behind loses the rest
				}
			}
		}
	}()
	return w, nil
}

// Next returns a channel that receives the time the next new veth appears.
func (w *VethWatch) Next() <-chan time.Time {
	c := make(chan time.Time, 1)
	w.mu.Lock()
	w.waiters = append(w.waiters, c)
	w.mu.Unlock()
	return c
}

// All returns a channel that receives every new veth from now on, in order.
func (w *VethWatch) All() <-chan Veth {
	c := make(chan Veth, 256)
	w.mu.Lock()
	w.subs = append(w.subs, c)
	w.mu.Unlock()
	return c
}

// Close ends the subscription.
func (w *VethWatch) Close() { w.once.Do(func() { close(w.done) }) }
