package podcheck

import (
	"fmt"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/netready/netready/pkg/podns"
)

// Pod is what the previous plugins in the chain set up for the pod.
type Pod struct {
	NetNS    string       // path of the pod's netns
	Links    []Link       // the sandbox interfaces
	Gateways []netip.Addr // gateways of the pod's addresses
}

// Link is one sandbox interface and its addresses.
type Link struct {
	Name  string
	Addrs []netip.Addr
}

// families reports which address families the pod has addresses in.
func (p Pod) families() (v4, v6 bool) {
	for _, l := range p.Links {
		for _, a := range l.Addrs {
			if a.Is4() {
				v4 = true
			} else {
				v6 = true
			}
		}
	}
	return v4, v6
}

// PodFromResult is the pod as the previous plugin's result describes it:
// its sandbox interfaces, their addresses and the gateways. ifName is the
// runtime's name for the pod's interface (CNI_IFNAME), which holds the
// addresses of a result too old to say which interface they are on. The
// errors are CNI errors.
func PodFromResult(netns, ifName string, prev *current.Result) (Pod, error) {
	pod := Pod{NetNS: netns}
	index := map[int]int{} // prevResult interface index -> pod.Links index
	for i, iface := range prev.Interfaces {
		if iface != nil && iface.Sandbox != "" {
			index[i] = len(pod.Links)
			pod.Links = append(pod.Links, Link{Name: iface.Name})
		}
	}
	for i, ip := range prev.IPs {
		if ip == nil {
			continue
		}
		addr, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			return pod, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: ips[%d] has no address", i), "")
		}
		addr = addr.Unmap()
		link := -1
		switch {
		case ip.Interface != nil && (*ip.Interface < 0 || *ip.Interface >= len(prev.Interfaces)):
			return pod, types.NewError(types.ErrInvalidNetworkConfig,
				fmt.Sprintf("prevResult: ips[%d].interface is %d, but there are %d interfaces", i, *ip.Interface, len(prev.Interfaces)), "")
		case ip.Interface != nil:
			if l, ok := index[*ip.Interface]; ok {
				link = l
			}
		default:
			// Old results carry no interface index: the address is on
			// the interface the runtime asked for.
			for l, lk := range pod.Links {
				if lk.Name == ifName {
					link = l
				}
			}
		}
		if link < 0 {
			continue // an address on a host-side interface is not the pod's
		}
		pod.Links[link].Addrs = append(pod.Links[link].Addrs, addr)
		if gw, ok := netip.AddrFromSlice(ip.Gateway); ok {
			pod.Gateways = append(pod.Gateways, gw.Unmap())
		}
	}
	return pod, nil
}

// PodFromNetNS stands in for prevResult when there is none (the CLI): the
// netns's own links other than loopback, their global addresses, and the
// gateways of its default routes.
func PodFromNetNS(n *podns.NetNS) (Pod, error) {
	links, err := n.View().Links()
	if err != nil {
		return Pod{}, fmt.Errorf("netns %s: links: %w", n.Path(), err)
	}
	pod := Pod{NetNS: n.Path()}
	for _, l := range links {
		pod.Links = append(pod.Links, Link(l))
	}
	if pod.Gateways, err = n.View().Gateways(); err != nil {
		return Pod{}, fmt.Errorf("netns %s: routes: %w", n.Path(), err)
	}
	return pod, nil
}
