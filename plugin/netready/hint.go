package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// k3sConfDir is where K3s's containerd reads conflists (default data dir),
// and where `netready install` chains netready.
const k3sConfDir = "/var/lib/rancher/k3s/agent/etc/cni/net.d"

// reproduce ends a timeout error with the command that runs the same wait
// by hand. The runtime names the netns, but not the file the config came
// from (CNI hands a plugin its object on stdin), so --conf names what the
// operator can find: the conflist of that network in the runtime's conf
// dir. The netns lives only as long as the sandbox: after the failed ADD
// the runtime deletes it, and the next try gets a new one.
func reproduce(netns, network, pod string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "to reproduce while the sandbox exists: netready check --netns %s --conf CONFLIST", shellWord(netns))
	if ns, name, ok := strings.Cut(pod, "/"); ok && ns != "" && name != "" {
		fmt.Fprintf(&b, " --pod %s", shellWord(pod))
	}
	if network != "" {
		fmt.Fprintf(&b, " (CONFLIST: the conflist named %q in the runtime's CNI conf dir, on K3s %s)", network, k3sConfDir)
	} else {
		fmt.Fprintf(&b, " (CONFLIST: the conflist chaining netready in the runtime's CNI conf dir, on K3s %s)", k3sConfDir)
	}
	return b.String()
}

// shellWord quotes s for a POSIX shell when it holds anything but the
// characters of a plain path.
func shellWord(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-:=+@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// prevResultError says that err, found in prevResult, is the previous
// plugin's: the runtime builds prevResult from the output of the plugin
// listed before netready in the conflist. CNI does not tell a plugin which
// one that was, so the message names the place in the chain, not a type.
func prevResultError(network string, err error) error {
	where := "the plugin before netready in its conflist"
	if network != "" {
		where = fmt.Sprintf("the plugin before netready in conflist %q", network)
	}
	code, msg := uint(types.ErrDecodingFailure), err.Error()
	var te *types.Error
	if errors.As(err, &te) {
		code, msg = te.Code, te.Msg
	}
	msg = strings.TrimPrefix(msg, "prevResult: ")
	return types.NewError(code, fmt.Sprintf("prevResult (the result of %s, passed on by the runtime) is not usable: %s; check that plugin and the conflist's cniVersion (netready passes the result on untouched)", where, msg), "")
}
