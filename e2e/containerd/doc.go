// Package containerd runs netready's chain under the real runtime of a K3s node: containerd 2
// with its CRI plugin, the runc shim and runc, driven by crictl, all built from the versions
// pinned in this module's go.mod (tool directives), in a simulated node from e2e/testbed.
//
// This is a Go module of its own so that the plugin's go.mod does not carry containerd's
// dependencies; `make e2e-containerd` runs its tests (root only; they skip otherwise).
//
// What a test gets from Start: a containerd started inside the bed's node netns with
// `nsenter --net=/var/run/netns/<node>` (not `ip netns exec`, which remounts /sys and so hides
// the cgroup mounts), so that the CNI plugins it runs from the bed's bin dir, cni0 and the pods'
// veths live in the node, as on a K3s node. Its root, state, temp, sockets (gRPC, ttrpc, the
// shims'), runc root, CNI conf dir, pod logs and the probe's reports are under one temp dir
// (Runtime.Dir, nr-<pid>-ctr-*); the pods' cgroups under one cgroupfs parent named like it. The
// CRI plugin uses the overlayfs snapshotter, restrict_oom_score_adj = true, the pause image
// below as its sandbox image, pod netns mounted under its state dir (so they never show in
// `ip netns list`), and AppArmor off (no profile is loaded into the host kernel).
//
// Images are built here, not pulled: ociimage.Write writes an OCI image layout (one layer of
// static binaries, config, manifest, index) and Runtime.Import loads it with
// `ctr -n k8s.io images import`. PauseImage holds e2e/pause; ProbeImage holds cmd/probe, which
// connects to the db the instant its container starts ("app") or runs the init container's
// wait loop ("init").
//
// Close removes the pods (so the chain's DEL runs), stops containerd, kills what is left of its
// shims and containers, unmounts everything under Runtime.Dir, removes the cgroups and the dir,
// and fails if any of it remains. Main removes the leftovers of killed runs first.
package containerd
