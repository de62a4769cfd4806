package k3s

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// OwnedConflist is the file netready's install keeps in K3s's CNI conf dir: lexically before
// K3s's 10-flannel.conflist, so containerd (which loads only the first) runs it.
const OwnedConflist = "00-netready.conflist"

// InstallNetready does what `netready install` does (until that command is on main): copies the
// netready binary into K3s's CNI bin dir and writes the owned conflist, K3s's live
// 10-flannel.conflist with plugin (netready's object) appended last, to a temp name without a
// CNI extension and renames it into place, so that containerd's fsnotify reload never reads half
// a file. plugin's "type" is set to netready.
func (n *Node) InstallNetready(plugin map[string]any) error {
	bin := filepath.Join(n.CNIBinDir(), "netready")
	data, err := os.ReadFile(filepath.Join(n.Tools, "netready"))
	if err != nil {
		return err
	}
	tmpBin := bin + ".tmp"
	if err := os.WriteFile(tmpBin, data, 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmpBin, bin); err != nil {
		return err
	}
	live, err := os.ReadFile(filepath.Join(n.CNIConfDir(), "10-flannel.conflist"))
	if err != nil {
		return fmt.Errorf("K3s's live chain: %w", err)
	}
	var list map[string]any
	if err := json.Unmarshal(live, &list); err != nil {
		return fmt.Errorf("K3s's live chain: %w", err)
	}
	plugins, _ := list["plugins"].([]any)
	p := map[string]any{}
	for k, v := range plugin {
		p[k] = v
	}
	p["type"] = "netready"
	list["plugins"] = append(plugins, p)
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	dst := filepath.Join(n.CNIConfDir(), OwnedConflist)
	tmp := dst + ".tmp" // no .conf/.conflist/.json suffix: libcni does not list it
	if err := os.WriteFile(tmp, append(out, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// UninstallNetready removes the owned conflist (containerd falls back to K3s's chain at once)
// and the binary.
func (n *Node) UninstallNetready() error {
	if err := os.Remove(filepath.Join(n.CNIConfDir(), OwnedConflist)); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := os.Remove(filepath.Join(n.CNIBinDir(), "netready")); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
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
