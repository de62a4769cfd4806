// Command flannel is a test double of the flannel CNI plugin (type "flannel"), the first plugin of
// the chain K3s writes. The real binary (github.com/flannel-io/cni-plugin) is not served by the Go
// module proxy and cannot be fetched here, so e2e runs this stand-in. It does what K3S.md describes
// and the real plugin does: read subnet.env, build a bridge delegate config from it, save that
// config under dataDir/<containerID>, delegate ADD to bridge, and replay the saved config on DEL.
// Everything after it in the chain (bridge, host-local, portmap, bandwidth) is the real upstream code.
//
// Differences from the real plugin, all deliberate and small:
//   - CHECK delegates to the bridge with the saved config and the runtime's prevResult (the real
//     plugin's CHECK is a no-op), so CHECK through the chain exercises the bridge's own checks.
//   - The result is printed in the list's cniVersion explicitly.
//
// Like the real plugin, a top-level "ipam" object is the base of the delegate's ipam (ranges and
// routes from subnet.env are added to it): the e2e testbed uses it to give host-local a per-bed
// "dataDir", so that test beds never share /var/lib/cni/networks.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

const (
	defaultSubnetFile = "/run/flannel/subnet.env"
	defaultDataDir    = "/var/lib/cni/flannel"
)

// netConf is the flannel plugin object of the conflist.
type netConf struct {
	types.NetConf

	SubnetFile    string         `json:"subnetFile"`
	DataDir       string         `json:"dataDir"`
	Delegate      map[string]any `json:"delegate"`
	IPAM          map[string]any `json:"ipam,omitempty"` // replaces types.NetConf's IPAM, which drops unknown keys
	RuntimeConfig map[string]any `json:"runtimeConfig,omitempty"`
}

// subnetEnv is what flanneld writes for this node.
type subnetEnv struct {
	network, subnet   *net.IPNet
	network6, subnet6 *net.IPNet
	mtu               *uint64
	ipMasq            *bool
}

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:   cmdAdd,
		Del:   cmdDel,
		Check: cmdCheck,
		// STATUS and GC: like the real plugin, nothing to report and no state to collect.
	}, version.All, "flannel CNI test double (netready e2e)")
}

func loadConf(stdin []byte) (*netConf, error) {
	n := &netConf{SubnetFile: defaultSubnetFile, DataDir: defaultDataDir}
	if err := json.Unmarshal(stdin, n); err != nil {
		return nil, fmt.Errorf("failed to load netconf: %w", err)
	}
	return n, nil
}

func cmdAdd(args *skel.CmdArgs) error {
	n, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	env, err := loadSubnetEnv(n.SubnetFile)
	if err != nil {
		return err
	}
	delegate, err := delegateConf(n, env)
	if err != nil {
		return err
	}
	conf, err := json.Marshal(delegate)
	if err != nil {
		return fmt.Errorf("error serializing delegate netconf: %w", err)
	}
	// Saved before the delegation so that a DEL after a failed ADD still reaches the bridge.
	if err := os.MkdirAll(n.DataDir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.DataDir, args.ContainerID), conf, 0o600); err != nil {
		return err
	}
	result, err := invoke.DelegateAdd(context.TODO(), delegate["type"].(string), conf, nil)
	if err != nil {
		return fmt.Errorf("failed to delegate add: %w", err)
	}
	return types.PrintResult(result, n.CNIVersion)
}

// delegateConf builds the bridge config exactly as the real plugin does: the "delegate" object's
// keys, then name, type, ipMasq, mtu, isGateway and cniVersion where the delegate does not set
// them, then ipam from subnet.env.
func delegateConf(n *netConf, env *subnetEnv) (map[string]any, error) {
	d := n.Delegate
	if d == nil {
		d = map[string]any{}
	}
	if t, ok := d["type"]; ok {
		if _, isString := t.(string); !isString {
			return nil, errors.New("'delegate' dictionary, if present, must have (string) 'type' field")
		}
	}
	if _, ok := d["name"]; ok {
		return nil, errors.New("'delegate' dictionary must not have 'name' field, it'll be set by flannel")
	}
	if _, ok := d["ipam"]; ok {
		return nil, errors.New("'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")
	}
	if n.RuntimeConfig != nil {
		d["runtimeConfig"] = n.RuntimeConfig
	}

	d["name"] = n.Name
	setDefault(d, "type", "bridge")
	// flannel masquerades itself when FLANNEL_IPMASQ is true; otherwise the bridge must.
	setDefault(d, "ipMasq", !*env.ipMasq)
	setDefault(d, "mtu", *env.mtu)
	if d["type"] == "bridge" {
		setDefault(d, "isGateway", true)
	}
	if n.CNIVersion != "" {
		d["cniVersion"] = n.CNIVersion
	}

	ipam := n.IPAM
	if ipam == nil {
		ipam = map[string]any{}
	}
	setDefault(ipam, "type", "host-local")
	var ranges [][]map[string]string
	var routes []types.Route
	if r, ok := ipam["routes"]; ok {
		buf, _ := json.Marshal(r)
		if err := json.Unmarshal(buf, &routes); err != nil {
			return nil, fmt.Errorf("failed to parse ipam.routes: %w", err)
		}
	}
	if env.subnet != nil {
		ranges = append(ranges, []map[string]string{{"subnet": env.subnet.String()}})
	}
	if env.subnet6 != nil {
		ranges = append(ranges, []map[string]string{{"subnet": env.subnet6.String()}})
	}
	for _, nw := range []*net.IPNet{env.network, env.network6} {
		if nw != nil {
			routes = append(routes, types.Route{Dst: *nw})
		}
	}
	ipam["ranges"] = ranges
	ipam["routes"] = routes
	d["ipam"] = ipam
	return d, nil
}

func setDefault(m map[string]any, key string, value any) {
	if _, ok := m[key]; !ok {
		m[key] = value
	}
}

func loadSubnetEnv(path string) (*subnetEnv, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	env := &subnetEnv{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		key, value, _ := strings.Cut(s.Text(), "=")
		switch key {
		case "FLANNEL_NETWORK":
			_, env.network, err = net.ParseCIDR(value)
		case "FLANNEL_SUBNET":
			_, env.subnet, err = net.ParseCIDR(value)
		case "FLANNEL_IPV6_NETWORK":
			_, env.network6, err = net.ParseCIDR(value)
		case "FLANNEL_IPV6_SUBNET":
			_, env.subnet6, err = net.ParseCIDR(value)
		case "FLANNEL_MTU":
			var mtu uint64
			mtu, err = strconv.ParseUint(value, 10, 32)
			env.mtu = &mtu
		case "FLANNEL_IPMASQ":
			ipMasq := value == "true"
			env.ipMasq = &ipMasq
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, key, err)
		}
	}
	if err := s.Err(); err != nil {
		return nil, err
	}

	var missing []string
	if env.network == nil && env.network6 == nil {
		missing = append(missing, "FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK")
	}
	if env.subnet == nil && env.subnet6 == nil {
		missing = append(missing, "FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET")
	}
	if env.mtu == nil {
		missing = append(missing, "FLANNEL_MTU")
	}
	if env.ipMasq == nil {
		missing = append(missing, "FLANNEL_IPMASQ")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s is missing %s", path, strings.Join(missing, ", "))
	}
	return env, nil
}

func cmdDel(args *skel.CmdArgs) error {
	n, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	path := filepath.Join(n.DataDir, args.ContainerID)
	conf, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		// Never added, or already deleted: per spec, DEL of missing resources succeeds.
		return nil
	}
	if err != nil {
		return err
	}
	var dc types.NetConf
	if err := json.Unmarshal(conf, &dc); err != nil {
		// As the real plugin: an unreadable saved config cannot be replayed; the bridge port
		// goes away with the pod's netns anyway.
		fmt.Fprintf(os.Stderr, "failed to parse saved netconf %s: %v\n", path, err)
		return nil
	}
	if err := invoke.DelegateDel(context.TODO(), dc.Type, conf, nil); err != nil {
		return err
	}
	// Only once the delegate is done, so that a failed DEL can be retried.
	_ = os.Remove(path)
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	n, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	if n.RawPrevResult == nil {
		return errors.New("flannel CHECK: required prevResult missing")
	}
	conf, err := os.ReadFile(filepath.Join(n.DataDir, args.ContainerID))
	if err != nil {
		return fmt.Errorf("flannel CHECK: no saved delegate config for container %s: %w", args.ContainerID, err)
	}
	var d map[string]any
	if err := json.Unmarshal(conf, &d); err != nil {
		return fmt.Errorf("flannel CHECK: saved delegate config: %w", err)
	}
	typ, _ := d["type"].(string)
	d["prevResult"] = n.RawPrevResult
	checkConf, err := json.Marshal(d)
	if err != nil {
		return err
	}
	return invoke.DelegateCheck(context.TODO(), typ, checkConf, nil)
}
