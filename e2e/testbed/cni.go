package testbed

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/netready/netready/internal/testbin"

	"github.com/netready/netready/pkg/install"
)

// K3sConflist returns the chain K3s writes (install.K3sChain, the repository's one copy), at
// cniVersion (K3s writes "1.0.0"; STATUS and GC need "1.1.0", CHECK "0.4.0"), with extra plugin
// objects (JSON) appended, e.g. netready's. It panics on extra that is not JSON: a test's typo.
func K3sConflist(cniVersion string, extra ...string) []byte {
	var list struct {
		Name       string            `json:"name"`
		CNIVersion string            `json:"cniVersion"`
		Plugins    []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(install.K3sChain, &list); err != nil {
		panic(err)
	}
	list.CNIVersion = cniVersion
	for _, e := range extra {
		list.Plugins = append(list.Plugins, json.RawMessage(e))
	}
	b, err := json.Marshal(list)
	if err != nil {
		panic(fmt.Sprintf("K3sConflist: an extra plugin is not JSON: %v", err))
	}
	return b
}

// ConfList parses a conflist and points its node-local paths into the bed: flannel's subnetFile
// and dataDir, and host-local's dataDir (through flannel's "ipam" object, which the real flannel
// plugin also uses as the base of the delegate's ipam; or in any plugin's own host-local ipam).
// The rest of the list is untouched, so conflists from conflist/ run as written.
func (b *Bed) ConfList(raw []byte) (*libcni.NetworkConfigList, error) {
	var list map[string]any
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if err := d.Decode(&list); err != nil {
		return nil, fmt.Errorf("testbed: conflist: %w", err)
	}
	plugins, _ := list["plugins"].([]any)
	for _, p := range plugins {
		plugin, ok := p.(map[string]any)
		if !ok {
			continue
		}
		ipam, _ := plugin["ipam"].(map[string]any)
		switch {
		case plugin["type"] == "flannel":
			plugin["subnetFile"] = b.SubnetEnv
			plugin["dataDir"] = b.FlannelDir
			if ipam == nil {
				ipam = map[string]any{}
				plugin["ipam"] = ipam
			}
			ipam["dataDir"] = b.IPAMDir
		case ipam != nil && ipam["type"] == "host-local":
			ipam["dataDir"] = b.IPAMDir
		}
	}
	localized, err := json.Marshal(list)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromBytes(localized)
}

// ConfListFile is ConfList of a file.
func (b *Bed) ConfListFile(path string) (*libcni.NetworkConfigList, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return b.ConfList(raw)
}

// Pod is a pod sandbox: its netns and what the runtime tells CNI about it. Set the fields before
// Add; Add, Check and Del must see the same values, as with a real runtime.
type Pod struct {
	*Netns
	Namespace   string // K8S_POD_NAMESPACE, default "default"
	Name        string // K8S_POD_NAME
	UID         string // K8S_POD_UID
	ContainerID string // the sandbox id: CNI_CONTAINERID and K8S_POD_INFRA_CONTAINER_ID
	IfName      string // "eth0"

	Annotations  map[string]string // runtimeConfig["io.kubernetes.cri.pod-annotations"]
	PortMappings []PortMapping     // runtimeConfig.portMappings
	Bandwidth    *BandwidthLimits  // runtimeConfig.bandwidth, only when set
}

// PortMapping is a hostPort, as containerd passes it.
type PortMapping struct {
	HostPort      int32  `json:"hostPort"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// BandwidthLimits is the kubernetes.io/ingress-bandwidth and egress-bandwidth annotations, in bits/s.
type BandwidthLimits struct {
	IngressRate  uint64 `json:"ingressRate,omitempty"`
	IngressBurst uint64 `json:"ingressBurst,omitempty"`
	EgressRate   uint64 `json:"egressRate,omitempty"`
	EgressBurst  uint64 `json:"egressBurst,omitempty"`
}

// Resident ADDs one pod alone with K3s's chain (no netready) and leaves it until Close, as a live
// node runs pods (coredns, say) before a burst of new ones. Tests that ADD many pods at once on a
// fresh bed need it: the bridge plugin (v1.10) pins cni0's MAC to the one it read when the ADD
// began, so ADDs that run together on a bridge that is new, or whose last port was detached, set
// it several times, and pods that resolved their gateway in between keep a MAC that nobody
// answers to until their neighbour entry fails (seconds to tens of seconds). Real, and netready
// rightly holds such pods; but it is not the opening a test or the benchmark measures.
func (b *Bed) Resident(ctx context.Context) (*Pod, error) {
	list, err := b.ConfList(K3sConflist("1.0.0"))
	if err != nil {
		return nil, err
	}
	p, err := b.NewPod(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := b.Add(ctx, list, p); err != nil {
		return nil, fmt.Errorf("testbed: resident pod: %w", err)
	}
	return p, nil
}

// NewPod creates a pod netns (Path under /var/run/netns) with lo up, as the runtime has it before
// the chain runs (containerd sets lo up with the loopback plugin). It is removed by Close, or
// earlier by Pod.Remove.
func (b *Bed) NewPod(ctx context.Context) (*Pod, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, fmt.Errorf("testbed %s: closed", b.Prefix)
	}
	b.npods++
	k := b.npods
	b.mu.Unlock()

	n, err := newNetns(ctx, fmt.Sprintf("%s-pod%d", b.Prefix, k))
	if err != nil {
		return nil, err
	}
	p := &Pod{
		Netns:       n,
		Namespace:   "default",
		Name:        fmt.Sprintf("pod-%d", k),
		UID:         uuid(),
		ContainerID: randomHex(32),
		IfName:      "eth0",
	}
	b.mu.Lock()
	b.pods = append(b.pods, p)
	closed := b.closed
	b.mu.Unlock()
	if closed { // Close ran meanwhile and did not see this pod
		return nil, p.Remove()
	}
	if _, err := n.IP(ctx, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return p, nil
}

// Remove deletes the pod's netns (its veth goes with it). DEL first if the chain should see it.
func (p *Pod) Remove() error { return p.Netns.remove() }

// RuntimeConf is what containerd (go-cni) hands libcni for this pod.
func (p *Pod) RuntimeConf() *libcni.RuntimeConf {
	annotations := p.Annotations
	if annotations == nil {
		annotations = map[string]string{}
	}
	portMappings := p.PortMappings
	if portMappings == nil {
		portMappings = []PortMapping{}
	}
	caps := map[string]any{
		"portMappings":                      portMappings,
		"io.kubernetes.cri.pod-annotations": annotations,
	}
	if p.Bandwidth != nil {
		caps["bandwidth"] = p.Bandwidth
	}
	return &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.Path,
		IfName:      p.IfName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
			{"K8S_POD_UID", p.UID},
		},
		CapabilityArgs: caps,
	}
}

// Add runs ADD of the list for the pod, as the runtime does: libcni, from a thread in the node
// netns, so every plugin runs in the node netns. Errors from a plugin are *types.Error (errors.As).
func (b *Bed) Add(ctx context.Context, list *libcni.NetworkConfigList, p *Pod) (*current.Result, error) {
	res, err := b.AddRaw(ctx, list, p)
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

// AddRaw is Add without the conversion to the current result version, so that the version the
// chain answered in can be checked.
func (b *Bed) AddRaw(ctx context.Context, list *libcni.NetworkConfigList, p *Pod) (types.Result, error) {
	var res types.Result
	err := b.Node.Do(func() error {
		var err error
		res, err = b.cni.AddNetworkList(ctx, list, p.RuntimeConf())
		return err
	})
	return res, err
}

// Check runs CHECK of the list for the pod (lists of cniVersion 0.4.0 and later).
func (b *Bed) Check(ctx context.Context, list *libcni.NetworkConfigList, p *Pod) error {
	return b.Node.Do(func() error { return b.cni.CheckNetworkList(ctx, list, p.RuntimeConf()) })
}

// Del runs DEL of the list for the pod.
func (b *Bed) Del(ctx context.Context, list *libcni.NetworkConfigList, p *Pod) error {
	return b.Node.Do(func() error { return b.cni.DelNetworkList(ctx, list, p.RuntimeConf()) })
}

// Status runs STATUS of the list (reaches the plugins from cniVersion 1.1.0).
func (b *Bed) Status(ctx context.Context, list *libcni.NetworkConfigList) error {
	return b.Node.Do(func() error { return b.cni.GetStatusNetworkList(ctx, list) })
}

// GC runs GC of the list with keep as the valid attachments: libcni DELs every other cached
// attachment of the list, then sends GC to the plugins (cniVersion 1.1.0).
func (b *Bed) GC(ctx context.Context, list *libcni.NetworkConfigList, keep ...*Pod) error {
	args := &libcni.GCArgs{}
	for _, p := range keep {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: p.ContainerID, IfName: p.IfName})
	}
	return b.Node.Do(func() error { return b.cni.GCNetworkList(ctx, list, args) })
}

// CNI is the bed's libcni runtime, for calls not wrapped here. Call it from Node.Do.
func (b *Bed) CNI() *libcni.CNIConfig { return b.cni }

func randomHex(n int) string {
	buf := make([]byte, n)
	rand.Read(buf)
	return hex.EncodeToString(buf)
}

func uuid() string {
	h := randomHex(16)
	return strings.Join([]string{h[0:8], h[8:12], h[12:16], h[16:20], h[20:32]}, "-")
}

// ExecNetready runs the bed's netready binary as a runtime does: started from
// a thread in the node netns, with exactly env (CNI_*; PATH is added) and
// stdin. started, if not nil, gets the child's pid once it runs. A non-zero
// exit is in the Result; the error says it could not run or did not end.
func (b *Bed) ExecNetready(ctx context.Context, env map[string]string, stdin []byte, started func(pid int)) (testbin.Result, error) {
	return testbin.Run(ctx, testbin.Call{
		Binary:  filepath.Join(b.BinDir, Netready),
		Env:     env,
		Stdin:   stdin,
		NetNS:   b.Node.Path,
		Started: started,
	})
}
