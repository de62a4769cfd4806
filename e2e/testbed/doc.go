// Package testbed simulates a K3s node, its upstream router and an egress target in network
// namespaces, and runs CNI chains into pods the way containerd does (libcni, from the node's netns).
//
// Topology of one bed (every netns name carries the bed's unique prefix, e.g. nr-4242-1-node):
//
//	[pod] eth0 ── veth ── cni0 [node] uplink ── veth ── to-node [router] to-db ── veth ── eth0 [db]
//	10.42.0.x             10.42.0.1   192.0.2.2         192.0.2.1        198.51.100.1     198.51.100.10
//	fd42::x               fd42::1     2001:db8:1::2     2001:db8:1::1    2001:db8:2::1    2001:db8:2::10
//
// The roles of the netns:
//   - node: the simulated K3s node. cni0 and the pods' host-side veths are created there by the
//     real bridge plugin on the first ADD, as on a real node. Default route via the router.
//     IPv4 and IPv6 forwarding on.
//   - router: routes the cluster CIDR (10.42.0.0/16, fd42::/56) to the node's uplink, so no NAT
//     is needed. Forwarding on. Faults are installed here (nft) or on the node (routes).
//   - node2 (only after AddNode): a second node for a second K3s, "uplink" 203.0.113.2 on its own
//     veth to the router's "to-node2" 203.0.113.1; default route via the router. The router
//     routes between the two uplinks, so the nodes reach each other and the db.
//   - db: the egress target, default route via the router. Go servers listen there: TCP on
//     5432 (accept and close), HTTP on 80 (200 on /healthz), DNS on UDP 53 (A/AAAA for any
//     name). ICMP echo is answered by the kernel.
//
// The underlay uses documentation ranges only (RFC 5737 192.0.2.0/24 and 198.51.100.0/24,
// RFC 3849 2001:db8::/32); pods get K3s's defaults from flannel's subnet.env: cluster
// 10.42.0.0/16, node subnet 10.42.0.0/24, MTU 1450, FLANNEL_IPMASQ=true (so the bridge does not
// masquerade) and, with Options.DualStack, fd42::/56 and fd42::/64. Every bed is its own set of
// netns, so beds reuse the same addresses and run in parallel.
//
// Safety: nothing here runs a CNI plugin, writes a sysctl or adds a route in the root netns, and no
// test netns is connected to the machine's interfaces. Each bed has its own temp dir holding the
// libcni cache, flannel's dataDir and subnet.env, and host-local's dataDir (passed through
// flannel's "ipam" object, see ConfList); Close removes the netns, the servers and the dir.
//
// Use: Start (or New in a test) makes a bed; ConfList/ConfListFile load a conflist into it;
// NewPod makes a pod netns; Add, Check, Del, Status and GC run the list through libcni from the
// node's netns, with the CNI_ARGS and capability args containerd sends; Netns.Dial, Do and Exec
// act inside a netns; BlockRouter, BlackholeNode, ProhibitNode and RemovePodRoute break the path
// and Fault.OpenAt lifts it at a chosen time, reporting when it really opened. Build compiles the
// plugins (reference plugins pinned in go.mod, the flannel test double, netready).
package testbed
