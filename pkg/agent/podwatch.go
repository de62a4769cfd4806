package agent

import (
	"encoding/json"
	"fmt"

	"github.com/netready/netready/pkg/install"
)

// WithK3sPodWatch returns the plugin object with "podWatch" filled from a K3s node's kubelet
// credentials (install.K3sPodWatch: dataDir as the node sees it, kubeconfig its
// agent/kubelet.kubeconfig, nil when absent), as `netready install` does: the server differs
// between K3s servers (the API server) and agents (K3s's load balancer), so one value in the
// chart's ConfigMap cannot serve both. A plugin object that sets podWatch itself is returned
// as it is. The error says why podWatch stays off; the plugin is then returned unchanged.
func WithK3sPodWatch(plugin []byte, dataDir string, kubeconfig []byte) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(plugin, &obj); err != nil {
		return plugin, fmt.Errorf("the netready config is not a JSON object: %v", err)
	}
	if _, ok := obj["podWatch"]; ok {
		return plugin, nil
	}
	pw, err := install.K3sPodWatch(dataDir, kubeconfig)
	if err != nil {
		return plugin, err
	}
	raw, err := json.Marshal(pw)
	if err != nil {
		return plugin, err
	}
	obj["podWatch"] = raw
	out, err := json.Marshal(obj)
	if err != nil {
		return plugin, err
	}
	return out, nil
}
