package install

import (
	"bufio"
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
)

// K3s's kubelet credentials, under the data dir on servers and agents alike
// (k3s pkg/agent/config: kubelet.kubeconfig names the API server as the
// kubelet reaches it, server-ca.crt and the client-kubelet pair).
const (
	kubeletKubeconfigInDataDir = "agent/kubelet.kubeconfig"
	serverCAInDataDir          = "agent/server-ca.crt"
	kubeletCertInDataDir       = "agent/client-kubelet.crt"
	kubeletKeyInDataDir        = "agent/client-kubelet.key"
)

// PodWatch is the "podWatch" object install writes: the API server and the
// kubelet's credentials, with which a waiting ADD learns that its pod was
// deleted. The node authorizer lets them get a pod bound to the node and
// watch pods with a spec.nodeName=<node> field selector, which is all
// netready asks.
type PodWatch struct {
	Server   string `json:"server"`
	CAFile   string `json:"caFile"`
	CertFile string `json:"certFile"`
	KeyFile  string `json:"keyFile"`
}

// K3sPodWatch is the podWatch of a K3s node whose data dir is dataDir, from
// the kubelet's kubeconfig K3s wrote there (kubeconfig, nil when there is
// none): its server (on a server node the local API server, on an agent
// K3s's own load balancer, so both follow what the kubelet uses) and its
// file paths, K3s's fixed names under <data-dir>/agent when it names none.
// K3s writes that file from one template; a line scan reads it, no YAML
// parser is linked into the plugin for it.
func K3sPodWatch(dataDir string, kubeconfig []byte) (*PodWatch, error) {
	path := filepath.Join(dataDir, kubeletKubeconfigInDataDir)
	if kubeconfig == nil {
		return nil, fmt.Errorf("no %s (K3s has not started its agent yet?)", path)
	}
	fields := map[string]string{}
	s := bufio.NewScanner(bytes.NewReader(kubeconfig))
	for s.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(s.Text()), "- ")), ":")
		v = strings.Trim(strings.TrimSpace(v), `"'`)
		if ok && v != "" && fields[k] == "" {
			fields[k] = v
		}
	}
	w := &PodWatch{
		Server:   fields["server"],
		CAFile:   fields["certificate-authority"],
		CertFile: fields["client-certificate"],
		KeyFile:  fields["client-key"],
	}
	if w.Server == "" {
		return nil, fmt.Errorf("%s names no server", path)
	}
	for _, f := range []struct {
		dst  *string
		dflt string
	}{{&w.CAFile, serverCAInDataDir}, {&w.CertFile, kubeletCertInDataDir}, {&w.KeyFile, kubeletKeyInDataDir}} {
		if !filepath.IsAbs(*f.dst) {
			*f.dst = filepath.Join(dataDir, f.dflt)
		}
	}
	return w, nil
}
