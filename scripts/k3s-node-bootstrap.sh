#!/usr/bin/env bash
# k3s-node-bootstrap.sh: put netready last in K3s's flannel CNI chain on this node, or take it out
# again. A thin wrapper: the work is done by `netready install` and `netready uninstall` (see
# `netready help` and README.md "Install on K3s"); this finds the binary and passes the arguments on.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
if [[ -x $here/netready ]]; then
	bin=$here/netready # the release tarball: the binary beside this script
elif [[ -x $here/../bin/netready ]]; then
	bin=$(cd -- "$here/../bin" && pwd -P)/netready # a checkout, after make build
else
	echo "k3s-node-bootstrap.sh: no netready binary beside this script ($here/netready) or in $here/../bin: run make build in a checkout, or run it from an unpacked release tarball." >&2
	exit 1
fi

cmd=install
args=()
for a in "$@"; do
	case $a in
	--uninstall) cmd=uninstall ;;
	-h | --help)
		echo "Usage: $0 [netready install options]      (the same as: $bin install ...)"
		echo "       $0 --uninstall [netready uninstall options]"
		echo
		exec "$bin" help
		;;
	*) args+=("$a") ;;
	esac
done
exec "$bin" "$cmd" ${args[@]+"${args[@]}"}
