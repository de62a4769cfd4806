#!/usr/bin/env bash
# Checks what `make dist` built: the checksums hold, each tarball has its files, and each binary
# runs on its architecture (arm64 and armv7 under qemu-user, from Debian's qemu-user-static) and
# validates the shipped conflist; the amd64 tarball's wrapper installs into a fake K3s node and out.
set -euo pipefail
cd "$(dirname "$0")/../dist"
sha256sum --quiet -c SHA256SUMS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for tarball in netready-*-linux-*.tar.gz; do
	arch=${tarball##*-linux-}
	arch=${arch%.tar.gz}
	case $arch in
	amd64) run=() ;;
	arm64) run=(qemu-aarch64-static) ;;
	arm) run=(qemu-arm-static) ;;
	*) echo "dist-check: unexpected architecture in $tarball" >&2; exit 1 ;;
	esac
	tar -xzf "$tarball" -C "$work"
	dir=$work/${tarball%.tar.gz}
	for f in netready k3s-node-bootstrap.sh LICENSE INSTALL.md conflist/10-flannel-netready.conflist; do
		[ -e "$dir/$f" ] || { echo "dist-check: $tarball lacks $f" >&2; exit 1; }
	done
	if [ "${#run[@]}" -gt 0 ] && ! command -v "${run[0]}" >/dev/null; then
		echo "dist-check: ${run[0]} not found (scripts/test-deps.sh installs qemu-user-static)" >&2
		exit 1
	fi
	"${run[@]}" "$dir/netready" version
	"${run[@]}" "$dir/netready" explain --conf "$dir/conflist/10-flannel-netready.conflist" --pod default/web >/dev/null
	if [ "${#run[@]}" -eq 0 ]; then
		# The tarball's wrapper finds its binary and installs it into a fake K3s node, and back out.
		root=$work/root-$arch k3s=$work/root-$arch/var/lib/rancher/k3s
		mkdir -p "$k3s/data/cni" "$k3s/agent/etc/cni/net.d"
		for p in flannel portmap bandwidth; do install -m 0755 /dev/null "$k3s/data/cni/$p"; done
		echo '{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel"},{"type":"portmap"},{"type":"bandwidth"}]}' >"$k3s/agent/etc/cni/net.d/10-flannel.conflist"
		"$dir/k3s-node-bootstrap.sh" --root "$root" --probe icmp://192.0.2.1 >/dev/null
		cmp -s "$dir/netready" "$k3s/data/cni/netready" || { echo "dist-check: $tarball: the wrapper did not install its binary" >&2; exit 1; }
		"$dir/k3s-node-bootstrap.sh" --uninstall --root "$root" >/dev/null
		[ ! -e "$k3s/agent/etc/cni/net.d/00-netready.conflist" ] || { echo "dist-check: $tarball: uninstall left the conflist" >&2; exit 1; }
	fi
done
echo "dist-check: every tarball runs on its architecture"
