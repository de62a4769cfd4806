// Package k3s runs netready's end-to-end tier on a real K3s node: the upstream K3s multi-call
// binary (from ../shared/k3s, unpacked and checksum-verified into a cache, or a user's own
// K3S_BIN) started in a testbed node netns behind a router netns, with the db netns outside the
// cluster. See README.md for what it runs, its variables and its cleanup.
package k3s
