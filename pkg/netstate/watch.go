package netstate

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Watcher turns netlink multicast messages into wake-ups. It does not parse
// them: the gate reads the state again (or tries its probes) on any change,
// which is simpler and cannot miss a kind of change that a parser ignored.
type Watcher struct {
	files []*os.File
	wg    sync.WaitGroup
}

// Multicast groups of the pod netns: what local conditions depend on.
const podGroups = unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR |
	unix.RTMGRP_IPV4_ROUTE | unix.RTMGRP_IPV6_ROUTE | unix.RTMGRP_NEIGH

// Multicast groups of the node netns: what opens a path beyond the pod.
// Address changes on the node do not open paths.
const nodeGroups = unix.RTMGRP_LINK | unix.RTMGRP_IPV4_ROUTE | unix.RTMGRP_IPV6_ROUTE | unix.RTMGRP_NEIGH

// Sockets makes sockets inside a network namespace (podns.NetNS does).
type Sockets interface {
	Socket(domain, typ, proto int) (fd int, err error)
}

// WatchNetNS notifies on changes to links, addresses, routes and neighbours
// in the netns that s makes its sockets in. Each change does a non-blocking
// send on notify, so a channel with a buffer of one coalesces bursts.
func WatchNetNS(s Sockets, notify chan<- struct{}) (*Watcher, error) {
	// A netlink socket belongs to the netns it was created in; binding it
	// to its groups can happen on any thread.
	fd, err := s.Socket(unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("watch pod netns: netlink socket: %w", err)
	}
	if err := bind(fd, podGroups); err != nil {
		return nil, fmt.Errorf("watch pod netns: %w", err)
	}
	w := &Watcher{}
	w.start(fd, "rtnetlink", notify)
	return w, nil
}

// WatchNode notifies on changes in the calling process's netns, the node's:
// routes, neighbours, links, and nftables rulesets (the way kube-router's
// iptables-nft rules and flannel's routes arrive). Where nf_tables is not
// available the nftables part is left out.
func WatchNode(notify chan<- struct{}) (*Watcher, error) {
	fd, err := netlinkSocket(unix.NETLINK_ROUTE, nodeGroups)
	if err != nil {
		return nil, fmt.Errorf("watch node netns: %w", err)
	}
	w := &Watcher{}
	w.start(fd, "rtnetlink", notify)
	if fd, err := netlinkSocket(unix.NETLINK_NETFILTER, 1<<(unix.NFNLGRP_NFTABLES-1)); err == nil {
		w.start(fd, "nftables", notify)
	}
	return w, nil
}

// netlinkSocket opens a non-blocking netlink socket bound to groups in the
// calling thread's netns.
func netlinkSocket(proto, groups int) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, fmt.Errorf("netlink socket: %w", err)
	}
	if err := bind(fd, groups); err != nil {
		return -1, err
	}
	return fd, nil
}

// bind subscribes the netlink socket fd to groups, closing it on failure.
func bind(fd, groups int) error {
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: uint32(groups)}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("netlink bind: %w", err)
	}
	return nil
}

func (w *Watcher) start(fd int, name string, notify chan<- struct{}) {
	// A non-blocking fd makes os.File use the runtime poller, so Close
	// wakes the reader instead of leaving it stuck in recvmsg.
	f := os.NewFile(uintptr(fd), name)
	w.files = append(w.files, f)
	w.wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			_, err := f.Read(buf)
			if errors.Is(err, os.ErrClosed) {
				return
			}
			// ENOBUFS means messages were lost: that too is a change.
			if err != nil && !errors.Is(err, unix.ENOBUFS) {
				return
			}
			select {
			case notify <- struct{}{}:
			default:
			}
		}
	})
}

// dropAll is a classic BPF program that accepts nothing: attached to a
// netlink socket, the kernel discards each message before it is queued, so a
// muted watcher costs its process no wake-up at all.
var dropAll = []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}

// Mute stops (on) or resumes (off) the notifications, in the kernel: a
// waiting ADD that follows another's probing has no use for the node's
// events (its leader follows them), and on a busy node they are most of
// what wakes it. Changes made while muted are not reported on resuming.
func (w *Watcher) Mute(on bool) error {
	var errs []error
	for _, f := range w.files {
		rc, err := f.SyscallConn()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var serr error
		err = rc.Control(func(fd uintptr) {
			if on {
				serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
					&unix.SockFprog{Len: uint16(len(dropAll)), Filter: &dropAll[0]})
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DETACH_FILTER, 0)
			}
		})
		errs = append(errs, err, serr)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("netlink watcher: mute %v: %w", on, err)
	}
	return nil
}

// Close stops watching and waits for the readers to finish.
func (w *Watcher) Close() {
	for _, f := range w.files {
		f.Close()
	}
	w.wg.Wait()
}
