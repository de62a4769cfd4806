#!/usr/bin/env bash
# Installs what netready's tests need on a Debian machine, as root: iproute2
# (ip netns), nftables (the tests' fault injection and the node watcher's
# nftables events), iptables (portmap's rules), qemu-user-static (to run
# the arm64 and armv7 release binaries) and strace (to see which files
# netready looks up). Go itself must already be
# on the machine; the Go modules the tests build (the reference CNI plugins)
# are pinned in go.mod and fetched by the go command.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin" # nft and iptables live there; a user's PATH may lack it

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# The K3s tier (e2e/k3s): xz to unpack shared/k3s; what K3s and runc need on the host.
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
command -v ipset >/dev/null 2>&1 || need+=(ipset)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v ethtool >/dev/null 2>&1 || need+=(ethtool)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
ldconfig -p 2>/dev/null | grep -q libseccomp.so.2 || need+=(libseccomp2)
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static) # make dist-check runs the arm builds
command -v strace >/dev/null 2>&1 || need+=(strace) # e2e: netready looks up no thread's /proc directory

if [ "${#need[@]}" -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		# Without root the network tests skip anyway; say what a full run needs and go on.
		echo "test-deps: missing ${need[*]}: the tests that need them run only as root; 'sudo make test' installs them" >&2
		exit 0
	fi
	echo "test-deps: installing ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v go >/dev/null 2>&1 || { echo "test-deps: go not found on PATH (install Go 1.26 or newer)" >&2; exit 1; }
go mod download
(cd e2e/k3s && go mod download)
