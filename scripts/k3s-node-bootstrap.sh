#!/usr/bin/env bash
# k3s-node-bootstrap.sh: put netready last in K3s's flannel CNI chain on this node, or take it out
# again. Run as root, before or after K3s is installed. See --help, and README.md "Install on K3s".
#
# What it touches (each path under --root when given):
#   <bin dir>/netready                                   the plugin binary (installed atomically)
#   /etc/rancher/k3s/netready/10-flannel-netready.conflist  K3s's chain + netready
#   /etc/rancher/k3s/config.yaml.d/90-netready.yaml      flannel-cni-conf: <that conflist>
# K3s copies the flannel-cni-conf file over its own 10-flannel.conflist at every start, which is the
# supported, durable way to change the chain (editing 10-flannel.conflist does not last).
set -euo pipefail
shopt -s nullglob
export LC_ALL=C

readonly PROG=k3s-node-bootstrap
readonly K3S_ETC=/etc/rancher/k3s
readonly K3S_CONFIG=$K3S_ETC/config.yaml
readonly DROPIN_DIR=$K3S_ETC/config.yaml.d
readonly DROPIN=$DROPIN_DIR/90-netready.yaml
readonly CONF_DIR=$K3S_ETC/netready
readonly CONFLIST=$CONF_DIR/10-flannel-netready.conflist
readonly CREATED_DIRS=$CONF_DIR/created-dirs # the directories an install created, for --uninstall
readonly K3S_DATA=/var/lib/rancher/k3s
readonly STABLE_BIN_DIR=$K3S_DATA/data/cni    # recent K3s: stable, meant for extra plugins
readonly OLD_BIN_DIR=$K3S_DATA/data/current/bin # older K3s: replaced at every K3s upgrade
# The plugins of K3s's chain (and flannel's delegates) that must all speak a list's cniVersion.
readonly K3S_CNI_PLUGINS=(flannel bridge host-local portmap bandwidth)
readonly RESTART_WAIT=60 # seconds --restart waits for K3s to rewrite its conflist

usage() {
	cat <<EOF
Usage: $0 [OPTION]...
       $0 --uninstall [--bin-dir DIR] [--root DIR] [--restart] [--dry-run]

Install netready on a K3s node as the last plugin of K3s's flannel chain: the binary into K3s's
CNI bin dir, the chain into $CONFLIST, and
$DROPIN pointing K3s's flannel-cni-conf at it.
The generated config is validated with the binary itself (netready explain) before anything is
written. A second run with the same arguments changes nothing.

Options:
  --binary PATH          the netready binary to install (default: netready beside this script, as
                         in the release tarball, else ../bin/netready from it, as in a checkout)
  --probe URL            a probe every gated pod must pass, e.g. tcp://10.0.0.5:5432,
                         icmp://10.0.0.1 (repeatable; default: none, gateway and default route only)
  --timeout DUR          the whole ADD budget, a Go duration, at most 110s (default 30s)
  --on-timeout fail|allow  fail: the kubelet retries the sandbox; allow: let the pod start,
                         log a warning (default fail)
  --skip-namespace NS    pods of NS pass ungated (repeatable; default kube-system; giving any
                         replaces the default, so repeat kube-system to keep it; '' skips none)
  --bin-dir DIR          K3s's CNI bin dir (default $STABLE_BIN_DIR;
                         where only $OLD_BIN_DIR exists, that)
  --root DIR             prefix every path touched with DIR (tests, image builds); paths written
                         into files stay as the node will see them; not with --restart
  --restart              restart k3s or k3s-agent (systemd or OpenRC), whichever runs, and wait
                         until K3s has picked the change up; without it the command is printed
  --dry-run              print every change, make none
  --uninstall            remove the binary, the conflist, the drop-in and the empty
                         $CONF_DIR, nothing else
  -h, --help             print this text

Exit status: 0 done (or nothing to do), 1 failed or refused (nothing changed unless the message
says so), 2 usage error.
EOF
}

say() { printf '%s\n' "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
	printf '%s: %s\n' "$PROG" "$*" >&2
	exit 1
}
usage_error() {
	printf '%s: %s\nRun %s --help for the options.\n' "$PROG" "$*" "$0" >&2
	exit 2
}

# --- arguments -------------------------------------------------------------------------------

binary='' timeout=30s on_timeout=fail bin_dir='' root=''
restart=0 dry_run=0 uninstall=0
probes=() skip_namespaces=() skip_given=0 install_only_opts=()

while (($# > 0)); do
	arg=$1 val='' has_val=0
	if [[ $arg == --*=* ]]; then
		val=${arg#*=} arg=${arg%%=*} has_val=1
	fi
	case $arg in
	--binary | --probe | --timeout | --on-timeout | --skip-namespace | --bin-dir | --root)
		if ((!has_val)); then
			(($# >= 2)) || usage_error "$arg needs a value"
			val=$2
			shift
		fi
		case $arg in
		--binary) binary=$val ;;
		--probe)
			[[ -n $val ]] || usage_error "--probe needs a probe URL, e.g. tcp://10.0.0.5:5432"
			probes+=("$val")
			;;
		--timeout) timeout=$val ;;
		--on-timeout) on_timeout=$val ;;
		--skip-namespace)
			skip_given=1
			[[ -z $val ]] || skip_namespaces+=("$val")
			;;
		--bin-dir) bin_dir=$val ;;
		--root) root=$val ;;
		esac
		case $arg in --binary | --probe | --timeout | --on-timeout | --skip-namespace) install_only_opts+=("$arg") ;; esac
		;;
	--restart | --dry-run | --uninstall | --help | -h)
		((!has_val)) || usage_error "$arg takes no value"
		case $arg in
		--restart) restart=1 ;;
		--dry-run) dry_run=1 ;;
		--uninstall) uninstall=1 ;;
		--help | -h)
			usage
			exit 0
			;;
		esac
		;;
	*) usage_error "unknown argument '$arg'" ;;
	esac
	shift
done

if ((uninstall)) && ((${#install_only_opts[@]} > 0)); then
	usage_error "--uninstall takes no ${install_only_opts[0]}: it removes what an install added"
fi
((skip_given)) || skip_namespaces=(kube-system)
case $on_timeout in
fail | allow) ;;
*) usage_error "--on-timeout wants fail or allow, got '$on_timeout'" ;;
esac
[[ -n $timeout ]] || usage_error "--timeout needs a Go duration such as 30s"
if [[ -n $bin_dir ]]; then
	[[ $bin_dir == /* ]] || usage_error "--bin-dir wants an absolute path as the node sees it, got '$bin_dir'"
	bin_dir=${bin_dir%/}
fi
if [[ -n $root ]]; then
	[[ -d $root ]] || usage_error "--root $root: not a directory"
	root=$(cd -- "$root" && pwd -P)
	[[ $root != / ]] || root=''
fi
if ((restart)) && [[ -n $root ]]; then
	usage_error "--restart acts on this machine's K3s; it cannot be combined with --root"
fi
if [[ -z $root ]] && ((!dry_run)) && ((EUID != 0)); then
	die "run as root (e.g. sudo $0 ...): K3s's files are root's. --dry-run works without."
fi

# --- helpers ---------------------------------------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/netready-bootstrap.XXXXXX")
trap 'rm -rf -- "$work"' EXIT

# json_string S: REPLY = S as a JSON string (quoted, escaped).
json_string() {
	local s=$1 out='' c i
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	s=${s//$'\n'/\\n}
	s=${s//$'\r'/\\r}
	s=${s//$'\t'/\\t}
	if [[ $s == *[[:cntrl:]]* ]]; then
		for ((i = 0; i < ${#s}; i++)); do
			c=${s:i:1}
			if [[ $c == [[:cntrl:]] ]]; then
				printf -v c '\\u%04x' "'$c"
			fi
			out+=$c
		done
		s=$out
	fi
	REPLY="\"$s\""
}

# json_list ITEM...: REPLY = the items as a one-line JSON list of strings.
json_list() {
	local out='' item
	for item in "$@"; do
		json_string "$item"
		out+=${out:+, }$REPLY
	done
	REPLY="[$out]"
}

# detect_bin_dir: sets bin_dir (node path) unless --bin-dir gave it, and bin_dir_note.
bin_dir_note=''
detect_bin_dir() {
	if [[ -n $bin_dir ]]; then
		return
	fi
	if [[ -d $root$STABLE_BIN_DIR ]]; then
		bin_dir=$STABLE_BIN_DIR
	elif [[ -d $root$OLD_BIN_DIR ]]; then
		bin_dir=$OLD_BIN_DIR
		bin_dir_note="this K3s has no $STABLE_BIN_DIR, only $OLD_BIN_DIR, which K3s replaces at every upgrade: run this script again right after each K3s upgrade, or pods will fail to start with 'failed to find plugin \"netready\"'"
	else
		bin_dir=$STABLE_BIN_DIR
		bin_dir_note="K3s is not installed yet (neither $STABLE_BIN_DIR nor $OLD_BIN_DIR exists): installing into $STABLE_BIN_DIR, the bin dir of current K3s releases; for a K3s without it, run again once K3s is installed"
	fi
}

# live_conflist: the conflist K3s writes and containerd reads, for the data dir of bin_dir.
live_conflist() {
	local data=$K3S_DATA
	case $bin_dir in
	*/data/cni) data=${bin_dir%/data/cni} ;;
	*/data/current/bin) data=${bin_dir%/data/current/bin} ;;
	esac
	REPLY=$data/agent/etc/cni/net.d/10-flannel.conflist
}

# k3s_config_files: REPLY_FILES = K3s's config file and drop-ins (.yaml/.yml, as K3s reads them),
# as root-prefixed paths, in K3s's order.
k3s_config_files() {
	local f name
	REPLY_FILES=()
	[[ ! -e $root$K3S_CONFIG ]] || REPLY_FILES+=("$root$K3S_CONFIG")
	for f in "$root$DROPIN_DIR"/*; do
		[[ -f $f ]] || continue
		name=${f##*/}
		name=${name,,}
		[[ $name == *.yaml || $name == *.yml ]] || continue
		REPLY_FILES+=("$f")
	done
}

# k3s_unit_files: REPLY_FILES = the service definitions and env files of k3s/k3s-agent.
k3s_unit_files() {
	local f
	REPLY_FILES=()
	for f in "$root"/etc/systemd/system/k3s*.service "$root"/etc/systemd/system/k3s*.service.env \
		"$root"/etc/systemd/system/k3s*.service.d/*.conf "$root"/etc/init.d/k3s* "$root$K3S_ETC"/k3s*.env; do
		[[ -f $f ]] || continue
		REPLY_FILES+=("$f")
	done
}

# grep_setting REGEX FILE...: prints node-path:line: text for each non-comment line matching REGEX.
grep_setting() {
	local re=$1 f line n text
	shift
	for f in "$@"; do
		[[ -r $f ]] || die "cannot read $f: run as root"
		n=0
		while IFS= read -r line || [[ -n $line ]]; do
			n=$((n + 1))
			text=${line#"${line%%[![:space:]]*}"}
			[[ $text == '#'* ]] && continue
			if [[ $line =~ $re ]]; then
				printf '  %s:%d: %s\n' "${f#"$root"}" "$n" "$line"
			fi
		done <"$f"
	done
}

# detect_service: sets svc_cmd (the restart command) and svc_active (1 when that service runs).
svc_cmd='' svc_active=0 svc_kind='' svc_name=''
detect_service() {
	local s
	[[ -z $root ]] || return 0
	if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
		for s in k3s k3s-agent; do
			if systemctl is-active --quiet "$s.service" 2>/dev/null; then
				svc_kind=systemd svc_name=$s svc_active=1
				break
			fi
		done
		if [[ -z $svc_name ]]; then
			for s in k3s k3s-agent; do
				if systemctl cat "$s.service" >/dev/null 2>&1; then
					svc_kind=systemd svc_name=$s
					break
				fi
			done
		fi
	elif command -v rc-service >/dev/null 2>&1; then
		for s in k3s k3s-agent; do
			if rc-service "$s" status >/dev/null 2>&1; then
				svc_kind=openrc svc_name=$s svc_active=1
				break
			fi
		done
		if [[ -z $svc_name ]]; then
			for s in k3s k3s-agent; do
				if [[ -x /etc/init.d/$s ]]; then
					svc_kind=openrc svc_name=$s
					break
				fi
			done
		fi
	fi
	case $svc_kind in
	systemd) svc_cmd="systemctl restart $svc_name" ;;
	openrc) svc_cmd="rc-service $svc_name restart" ;;
	esac
}

restart_hint() {
	if [[ -n $svc_cmd ]]; then
		REPLY=$svc_cmd
	else
		REPLY="restart K3s: systemctl restart k3s (k3s-agent on an agent), or rc-service k3s restart on OpenRC"
	fi
}

# restart_k3s: restarts the running K3s service; returns 1 when none runs.
restart_k3s() {
	if ((!svc_active)); then
		return 1
	fi
	say "restarting $svc_name ($svc_cmd)"
	case $svc_kind in
	systemd) systemctl restart "$svc_name.service" ;;
	openrc) rc-service "$svc_name" restart ;;
	esac || die "'$svc_cmd' failed: see journalctl -u $svc_name (or /var/log/$svc_name.log on OpenRC); the files are in place, fix K3s and restart it"
}

# wait_for CMD...: runs CMD every second until it succeeds or RESTART_WAIT seconds pass.
wait_for() {
	local i
	for ((i = 0; i < RESTART_WAIT; i++)); do
		"$@" && return 0
		sleep 1
	done
	return 1
}

chains_netready() { [[ -f $1 ]] && grep -q '"type"[[:space:]]*:[[:space:]]*"netready"' "$1"; }
not_chains_netready() { ! chains_netready "$1"; }
same_file() { [[ -f $2 ]] && cmp -s -- "$1" "$2"; }

# Planned changes: parallel arrays of action (create|update), source file, node path, mode.
plan_action=() plan_src=() plan_dest=() plan_mode=() new_dirs=()

plan_file() { # SRC DEST MODE
	local src=$1 dest=$2 mode=$3
	if [[ -e $root$dest || -L $root$dest ]]; then
		[[ -f $root$dest ]] || die "$root$dest exists and is not a regular file: move it away and run again"
		if cmp -s -- "$src" "$root$dest" && { [[ $mode != 0755 ]] || [[ -x $root$dest ]]; }; then
			return
		fi
		plan_action+=(update)
	else
		plan_action+=(create)
	fi
	plan_src+=("$src") plan_dest+=("$dest") plan_mode+=("$mode")
}

# plan_dirs_for DEST: adds the missing directories above DEST to new_dirs, outermost first.
plan_dirs_for() {
	local d chain=() c n
	d=$(dirname -- "$1")
	while [[ $d != / && ! -d $root$d ]]; do
		chain=("$d" "${chain[@]}")
		d=$(dirname -- "$d")
	done
	for c in "${chain[@]}"; do
		for n in "${new_dirs[@]}"; do [[ $n != "$c" ]] || continue 2; done
		new_dirs+=("$c")
	done
}

# recorded_dirs: REPLY_FILES = the directories listed in CREATED_DIRS (node paths), in order.
recorded_dirs() {
	local line
	REPLY_FILES=()
	[[ -f $root$CREATED_DIRS ]] || return 0
	while IFS= read -r line || [[ -n $line ]]; do
		[[ $line == /* ]] || continue
		REPLY_FILES+=("$line")
	done <"$root$CREATED_DIRS"
}

# install_file SRC DEST MODE: writes beside DEST, then renames over it (atomic on one filesystem).
install_file() {
	local src=$1 dest=$2 mode=$3 tmp
	tmp=$(dirname -- "$dest")/.$(basename -- "$dest").netready-tmp.$$
	if ! { cp -- "$src" "$tmp" && chmod "$mode" "$tmp" && mv -f -- "$tmp" "$dest"; }; then
		rm -f -- "$tmp"
		return 1
	fi
	if [[ -z $root ]] && command -v restorecon >/dev/null 2>&1; then
		restorecon "$dest" >/dev/null 2>&1 || true
	fi
}

show_file() { sed 's/^/    | /' -- "$1"; }
indent() { sed "s/^/$1/"; } # indent PREFIX: prefixes every line of stdin

# --- uninstall -------------------------------------------------------------------------------

do_uninstall() {
	detect_bin_dir
	detect_service
	live_conflist
	local live=$REPLY bin=$bin_dir/netready f removed=0 keep_bin=0 k3s_stopped=0
	local targets=("$DROPIN" "$CONFLIST")

	# K3s's live conflist chains netready until K3s restarts: removing the binary before that would
	# fail the ADD of every new pod. So the binary goes only once K3s has rewritten its conflist,
	# or when K3s is known to be stopped (it rewrites the conflist when it starts).
	[[ -z $svc_kind ]] || ((svc_active)) || k3s_stopped=1
	if [[ -e $root$bin ]] && chains_netready "$root$live" && ((!restart || !svc_active)) && ((!k3s_stopped)); then
		keep_bin=1
	else
		targets+=("$bin")
	fi

	recorded_dirs
	local dirs=("$CONF_DIR") i
	for ((i = ${#REPLY_FILES[@]} - 1; i >= 0; i--)); do
		[[ ${REPLY_FILES[i]} == "$CONF_DIR" ]] || dirs+=("${REPLY_FILES[i]}")
	done

	if ((dry_run)); then
		if [[ ! -e $root$DROPIN && ! -e $root$CONFLIST && ! -e $root$bin && ! -e $root$CREATED_DIRS ]]; then
			say "dry run: nothing to remove, netready is not installed here."
			return 0
		fi
		say "dry run: nothing is changed. --uninstall would:"
		for f in "${targets[@]}" "$CREATED_DIRS"; do
			[[ ! -e $root$f ]] || say "  remove $f"
		done
		for f in "${dirs[@]}"; do
			[[ ! -d $root$f ]] || say "  remove the directory $f if it is then empty"
		done
		((!keep_bin)) || say "  keep $bin until K3s restarts (its live $live still chains netready)"
		((!restart)) || say "  restart K3s and wait for it to drop netready from $live, then remove $bin"
		return 0
	fi

	for f in "$DROPIN" "$CONFLIST"; do
		if [[ -e $root$f ]]; then
			rm -f -- "$root$f" || die "cannot remove $root$f"
			say "removed $f"
			removed=1
		fi
	done

	if ((restart && !keep_bin)) && [[ -e $root$bin ]] && chains_netready "$root$live" && restart_k3s; then
		if ! wait_for not_chains_netready "$root$live"; then
			die "K3s has not rewritten $live without netready within ${RESTART_WAIT}s; $bin is kept so that pods still start. Check K3s (journalctl -u $svc_name), then run $0 --uninstall again"
		fi
	fi
	if ((keep_bin)); then
		restart_hint
		say "kept $bin: K3s's live $live still chains netready, and every new pod would fail without the binary."
		say "Restart K3s ($REPLY), then run $0 --uninstall again to remove it (or run it with --restart)."
		report_references
		return 0
	fi
	if [[ -e $root$bin ]]; then
		rm -f -- "$root$bin" || die "cannot remove $root$bin"
		say "removed $bin"
		removed=1
	fi
	rm -f -- "$root$CREATED_DIRS"
	for f in "${dirs[@]}"; do
		[[ -d $root$f ]] || continue
		if rmdir -- "$root$f" 2>/dev/null; then
			say "removed the directory $f"
		elif [[ $f == "$CONF_DIR" ]]; then
			warn "$CONF_DIR holds files netready did not put there; left in place"
		fi
	done
	((removed)) || say "nothing to remove: netready is not installed here"
	report_references
}

# report_references: warns about K3s config that still points at the removed conflist.
report_references() {
	local refs
	k3s_config_files
	refs=$(grep_setting "flannel-cni-conf.*${CONFLIST//./\\.}" "${REPLY_FILES[@]}")
	if [[ -n $refs ]]; then
		warn "K3s config still points at the removed $CONFLIST; K3s will not start until you delete these lines:"
		printf '%s\n' "$refs" >&2
	fi
}

if ((uninstall)); then
	do_uninstall
	exit 0
fi

# --- install: the binary -----------------------------------------------------------------------

if [[ -z $binary ]]; then
	script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
	if [[ -f $script_dir/netready ]]; then
		binary=$script_dir/netready
	elif [[ -f $script_dir/../bin/netready ]]; then
		binary=$(cd -- "$script_dir/../bin" && pwd -P)/netready
	else
		die "no netready binary beside this script ($script_dir/netready) or in $script_dir/../bin: pass --binary PATH (a release tarball has it beside the script; in a checkout, run make build)"
	fi
fi
[[ -f $binary ]] || die "--binary $binary: no such file"
[[ -x $binary ]] || die "--binary $binary is not executable: chmod +x it"
if ! version_out=$("$binary" version 2>&1); then
	die "cannot run $binary ($version_out): is it the build for this machine ($(uname -m))? Release tarballs: linux-amd64, linux-arm64, linux-arm (32-bit ARMv7)"
fi
[[ $version_out == netready* ]] || die "$binary does not look like netready ('$binary version' said: $version_out)"

detect_bin_dir
[[ -z $bin_dir_note ]] || warn "$bin_dir_note"

# --- install: cniVersion, from K3s's own plugins ------------------------------------------------

# supports_110 PATH NAME: asks one CNI plugin (as NAME, for a multi-call binary) for its versions.
supports_110() {
	local out re='"supportedVersions"[[:space:]]*:[[:space:]]*\[([^]]*)\]'
	# shellcheck disable=SC2016 # $0 and $1 belong to the inner bash
	local cmd=(env -u CNI_CONTAINERID -u CNI_NETNS -u CNI_IFNAME -u CNI_ARGS -u CNI_PATH CNI_COMMAND=VERSION
		bash -c 'exec -a "$0" "$1"' "$2" "$1")
	if command -v timeout >/dev/null 2>&1; then
		cmd=(timeout 10 "${cmd[@]}")
	fi
	out=$("${cmd[@]}" <<<'{"cniVersion":"1.0.0"}' 2>/dev/null) || return 1
	[[ $out =~ $re ]] && [[ ${BASH_REMATCH[1]} == *'"1.1.0"'* ]]
}

cni_version=1.0.0
asked=() unsupported=()
for name in "${K3S_CNI_PLUGINS[@]}"; do
	path=$root$bin_dir/$name
	if [[ ! -f $path ]] && [[ -f $root$bin_dir/cni ]]; then
		path=$root$bin_dir/cni # K3s's multi-call binary, run under the plugin's name
	fi
	[[ -f $path && -x $path ]] || continue
	asked+=("$name")
	supports_110 "$path" "$name" || unsupported+=("$name")
done
if ((${#asked[@]} == 0)); then
	cni_version_note="no K3s CNI plugin in $bin_dir to ask: cniVersion 1.0.0 (run again once K3s is installed to get 1.1.0 where its plugins support it)"
elif ((${#unsupported[@]} > 0)); then
	cni_version_note="K3s's ${unsupported[*]} in $bin_dir do not support CNI 1.1.0: cniVersion 1.0.0 (STATUS and GC will not reach netready)"
else
	cni_version=1.1.0
	cni_version_note="K3s's ${asked[*]} in $bin_dir support CNI 1.1.0: cniVersion 1.1.0"
fi

# --- install: the conflist ---------------------------------------------------------------------

render_entry() {
	json_string "$timeout"
	local t=$REPLY
	json_string "$on_timeout"
	local o=$REPLY
	if ((${#probes[@]} > 0)); then json_list "${probes[@]}"; else REPLY='[]'; fi
	local p=$REPLY
	printf '    {\n'
	printf '      "type": "netready",\n'
	printf '      "capabilities": {"io.kubernetes.cri.pod-annotations": true},\n'
	printf '      "timeout": %s,\n' "$t"
	printf '      "onTimeout": %s,\n' "$o"
	if ((${#skip_namespaces[@]} > 0)); then
		printf '      "probes": %s,\n' "$p"
		json_list "${skip_namespaces[@]}"
		printf '      "skip": {"namespaces": %s}\n' "$REPLY"
	else
		printf '      "probes": %s\n' "$p"
	fi
	printf '    }\n'
}

render_conflist() {
	cat <<EOF
{
  "name": "cbr0",
  "cniVersion": "$cni_version",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "forceAddress": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    },
    {
      "type": "bandwidth",
      "capabilities": {"bandwidth": true}
    },
EOF
	render_entry
	printf '  ]\n}\n'
}

new_conflist=$work/conflist
new_dropin=$work/dropin
render_conflist >"$new_conflist"
cat >"$new_dropin" <<EOF
# Written by netready's k3s-node-bootstrap.sh; k3s-node-bootstrap.sh --uninstall removes it.
# At every start K3s copies this file over its own 10-flannel.conflist.
flannel-cni-conf: $CONFLIST
EOF

if ! explain_err=$("$binary" explain --conf "$new_conflist" 2>&1 >"$work/explain"); then
	die "$(printf 'the netready config built from the arguments is invalid; nothing was changed.\n%s says:\n%s\nFix the --probe, --timeout, --on-timeout or --skip-namespace values and run again.' "$binary" "$(indent '  ' <<<"$explain_err")")"
fi

# --- install: refuse what would not take effect --------------------------------------------------

k3s_config_files
config_files=("${REPLY_FILES[@]}")
other_config=()
for f in "${config_files[@]}"; do
	[[ $f == "$root$DROPIN" ]] || other_config+=("$f")
done
k3s_unit_files
unit_files=("${REPLY_FILES[@]}")

set_elsewhere=$(
	grep_setting '^["'"'"']?flannel-cni-conf\+?["'"'"']?[[:space:]]*:' "${other_config[@]}"
	grep_setting '(^|[[:space:]"'"'"'])--flannel-cni-conf([=[:space:]"'"'"']|$)' "${unit_files[@]}"
)
if [[ -n $set_elsewhere ]]; then
	entry=$(render_entry | sed 's/^    //')
	restart_hint
	if [[ $set_elsewhere == *"$CONFLIST"* ]]; then
		die "$(printf 'refusing to install: flannel-cni-conf is already set, outside %s:\n%s\nIt points at netready'"'"'s own conflist: delete that setting (%s sets it) and run again. Nothing was changed.' "$DROPIN" "$set_elsewhere" "$DROPIN")"
	fi
	die "$(printf 'refusing to install: flannel-cni-conf is already set:\n%s\nK3s takes one flannel-cni-conf, so netready must go into that conflist. Nothing was changed. To merge by hand:\n  1. append this object as the last element of "plugins" in that conflist:\n%s\n  2. install -m 0755 %s %s/netready\n  3. check it: %s explain --conf <that conflist>\n  4. apply it: %s\nOr remove that flannel-cni-conf setting and run this script again.' \
		"$set_elsewhere" "$(indent '     ' <<<"$entry")" "$binary" "$bin_dir" "$binary" "$REPLY")"
fi

no_flannel=$(
	grep_setting '^["'"'"']?flannel-backend["'"'"']?[[:space:]]*:[[:space:]]*["'"'"']?none["'"'"']?[[:space:]]*(#.*)?$' "${config_files[@]}"
	grep_setting '(^|[[:space:]"'"'"'])--flannel-backend[=[:space:]]+["'"'"']?none([[:space:]"'"'"']|$)' "${unit_files[@]}"
)
if [[ -n $no_flannel ]]; then
	die "$(printf 'refusing to install: K3s runs without flannel here:\n%s\nK3s then writes no flannel conflist and ignores flannel-cni-conf; chain netready last in the conflist of the CNI you use instead. Nothing was changed.' "$no_flannel")"
fi

other_config_file=$(grep_setting '(^|[[:space:]"'"'"'])(--config([=[:space:]"'"'"']|$)|K3S_CONFIG_FILE=)' "${unit_files[@]}")
if [[ -n $other_config_file ]]; then
	die "$(printf 'refusing to install: K3s reads its config from another file here:\n%s\nso it would ignore %s. Add "flannel-cni-conf: %s" to that file (or its .d directory) by hand. Nothing was changed.' "$other_config_file" "$DROPIN" "$CONFLIST")"
fi

# --- install: plan, then apply ----------------------------------------------------------------

plan_file "$binary" "$bin_dir/netready" 0755
plan_file "$new_conflist" "$CONFLIST" 0644
plan_file "$new_dropin" "$DROPIN" 0644
for dest in "${plan_dest[@]}"; do plan_dirs_for "$dest"; done
# Record the directories this run creates (with those an earlier run recorded), so that
# --uninstall removes exactly them, when they are empty by then.
recorded_dirs
all_dirs=("${REPLY_FILES[@]}")
for d in "${new_dirs[@]}"; do
	for r in "${all_dirs[@]}"; do [[ $r != "$d" ]] || continue 2; done
	all_dirs+=("$d")
done
if ((${#all_dirs[@]} > 0)); then
	{
		say "# Directories netready's k3s-node-bootstrap.sh created; --uninstall removes them if empty."
		printf '%s\n' "${all_dirs[@]}"
	} >"$work/created-dirs"
	plan_file "$work/created-dirs" "$CREATED_DIRS" 0644
	plan_dirs_for "$CREATED_DIRS"
fi
# The drop-in goes last: K3s never points at a conflist or binary that is not in place yet.
for i in "${!plan_dest[@]}"; do
	if [[ ${plan_dest[i]} == "$DROPIN" ]] && ((i != ${#plan_dest[@]} - 1)); then
		plan_action+=("${plan_action[i]}") plan_src+=("${plan_src[i]}") plan_dest+=("${plan_dest[i]}") plan_mode+=("${plan_mode[i]}")
		unset 'plan_action[i]' 'plan_src[i]' 'plan_dest[i]' 'plan_mode[i]'
		plan_action=("${plan_action[@]}") plan_src=("${plan_src[@]}") plan_dest=("${plan_dest[@]}") plan_mode=("${plan_mode[@]}")
		break
	fi
done

detect_service
live_conflist
live=$REPLY

say "netready $(cut -d' ' -f2 <<<"$version_out") into K3s's flannel chain${root:+ under $root}: probes ${probes[*]:-none}, timeout $timeout, onTimeout $on_timeout, skip namespaces ${skip_namespaces[*]:-none}"
say "$cni_version_note"

if ((dry_run)); then
	if ((${#plan_dest[@]} == 0)); then
		say "dry run: nothing to change, every file is already as it would be written."
	else
		say "dry run: nothing is changed. This run would:"
		for d in "${new_dirs[@]}"; do say "  create the directory $d"; done
		for i in "${!plan_dest[@]}"; do
			if [[ ${plan_dest[i]} == "$bin_dir/netready" ]]; then
				say "  ${plan_action[i]} ${plan_dest[i]} (mode ${plan_mode[i]}) from $binary"
			else
				say "  ${plan_action[i]} ${plan_dest[i]} (mode ${plan_mode[i]}):"
				if [[ ${plan_action[i]} == update ]] && command -v diff >/dev/null 2>&1; then
					diff -u --label "${plan_dest[i]} (now)" --label "${plan_dest[i]} (new)" -- "$root${plan_dest[i]}" "${plan_src[i]}" | sed 's/^/    /' || true
				else
					show_file "${plan_src[i]}"
				fi
			fi
		done
	fi
	say "A pod outside the skipped namespaces would get (netready explain):"
	sed 's/^/    /' -- "$work/explain"
	exit 0
fi

done_list=()
for d in "${new_dirs[@]}"; do
	mkdir -m 0755 -- "$root$d" || die "cannot create $root$d${done_list[*]:+ (already done: ${done_list[*]})}; fix it and run again"
	done_list+=("created $d")
	say "created the directory $d"
done
for i in "${!plan_dest[@]}"; do
	if ! install_file "${plan_src[i]}" "$root${plan_dest[i]}" "${plan_mode[i]}"; then
		die "cannot write $root${plan_dest[i]}${done_list[*]:+ (already done: ${done_list[*]})}: fix it and run again, or run $0 --uninstall"
	fi
	done_list+=("${plan_action[i]}d ${plan_dest[i]}")
	say "${plan_action[i]}d ${plan_dest[i]}"
done
((${#plan_dest[@]} > 0)) || say "nothing to change: every file is already in place"

if same_file "$root$CONFLIST" "$root$live"; then
	say "K3s already runs this chain ($live)."
	if ((${#plan_dest[@]} > 0)); then
		say "A new binary takes effect at the next pod's ADD; no restart needed."
	fi
	exit 0
fi
if ((restart)); then
	if restart_k3s; then
		if wait_for same_file "$root$CONFLIST" "$root$live"; then
			say "K3s now runs the chain with netready ($live). Pods created from now on are gated; running pods are untouched."
		else
			die "K3s restarted but $live is not netready's conflist after ${RESTART_WAIT}s: check K3s's log (journalctl -u $svc_name) for flannel-cni-conf errors"
		fi
	else
		say "K3s is not running: it will chain netready when it starts."
	fi
	exit 0
fi
if [[ -n $svc_kind ]] && ((!svc_active)); then
	say "K3s ($svc_name) is not running: it chains netready when it starts."
	exit 0
fi
restart_hint
say "Apply it: $REPLY"
say "  (at start K3s copies $CONFLIST into $live; pods created after that are gated, running pods are untouched)"
