package k3s

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// OwnedConflist is the file netready's install keeps in K3s's CNI conf dir: lexically before
// K3s's 10-flannel.conflist, so containerd (which loads only the first) runs it.
const OwnedConflist = "00-netready.conflist"

// InstallState is the record `netready install` keeps beside K3s's conf dir, in the data dir.
const InstallState = "agent/etc/cni/netready-install.state"

// CLIResult is what a run of the netready binary printed and its exit code.
type CLIResult struct {
	Code           int
	Stdout, Stderr string
}

func (r CLIResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
}

// Netready runs the netready binary the tier built (the one a user installs) on the node's host
// side, as root, the way a user runs it: `netready install --data-dir <the tier's data dir> ...`.
// It needs no netns: install and uninstall only work on files. err is set only when the binary
// could not run; a non-zero exit is in Code.
func (n *Node) Netready(ctx context.Context, args ...string) (CLIResult, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(n.Tools, "netready"), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := CLIResult{Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	case err != nil:
		return r, fmt.Errorf("running netready %s: %w", strings.Join(args, " "), err)
	}
	return r, nil
}

// InstallNetready runs `netready install --data-dir <data dir> --log-file LOG` plus args
// (--probe, --timeout, ...) and fails unless it exits 0.
func (n *Node) InstallNetready(ctx context.Context, logFile string, args ...string) (CLIResult, error) {
	r, err := n.Netready(ctx, append([]string{"install", "--data-dir", n.DataDir, "--log-file", logFile}, args...)...)
	if err == nil && r.Code != 0 {
		err = fmt.Errorf("netready install %s: %s", strings.Join(args, " "), r)
	}
	return r, err
}

// UninstallNetready runs `netready uninstall --data-dir <data dir>` and fails unless it exits 0.
func (n *Node) UninstallNetready(ctx context.Context) (CLIResult, error) {
	r, err := n.Netready(ctx, "uninstall", "--data-dir", n.DataDir)
	if err == nil && r.Code != 0 {
		err = fmt.Errorf("netready uninstall: %s", r)
	}
	return r, err
}

// LiveChain returns the plugin types of the CNI network containerd has loaded for pods, from
// `crictl info` (its cniconfig), e.g. [flannel portmap bandwidth netready].
func (n *Node) LiveChain(ctx context.Context) ([]string, error) {
	out, err := n.Crictl(ctx, "info")
	if err != nil {
		return nil, err
	}
	return chainFromInfo([]byte(out))
}

// chainFromInfo picks the pod network's plugin types out of `crictl info`: cniconfig.Networks
// holds the loopback network and the conflist's; each plugin's Source is its JSON.
func chainFromInfo(info []byte) ([]string, error) {
	var v struct {
		CNIConfig struct {
			Networks []struct {
				Config struct {
					Name    string `json:"Name"`
					Plugins []struct {
						Network struct {
							Type string `json:"type"`
						} `json:"Network"`
					} `json:"Plugins"`
				} `json:"Config"`
			} `json:"Networks"`
		} `json:"cniconfig"`
	}
	if err := json.Unmarshal(info, &v); err != nil {
		return nil, fmt.Errorf("crictl info: %w", err)
	}
	for _, nw := range v.CNIConfig.Networks {
		if nw.Config.Name == "cni-loopback" {
			continue
		}
		var types []string
		for _, p := range nw.Config.Plugins {
			types = append(types, p.Network.Type)
		}
		return types, nil
	}
	return nil, fmt.Errorf("crictl info: no pod network loaded (cniconfig: %.300s)", strings.TrimSpace(string(info)))
}
