// Package install puts netready last in K3s's flannel chain on a node and
// takes it out again, as an owned conflist that containerd reads first.
//
// The work is split as the rest of netready is: what to do is a pure
// function (PlanInstall, PlanUninstall) of the options and of what was read
// from the node (ReadNode), table-tested in temp dirs; Apply does it. The
// building blocks (BuildOwned, WriteConflist, InstallBinary, FirstConflist,
// FindK3s) are exported for `netready agent`, which keeps the owned conflist
// in step with K3s's chain.
package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/netready/netready/pkg/config"
)

// File names in K3s's CNI conf dir. containerd loads only the lexically
// first *.conf, *.conflist or *.json there, so "00-" puts netready's file
// before K3s's "10-flannel.conflist".
const (
	OwnedName   = "00-netready.conflist"
	PrimaryName = "10-flannel.conflist"
)

// K3sChain is the chain K3s writes when it runs flannel (K3S.md). It is used
// only when the node has no live 10-flannel.conflist to read (K3s not started
// yet): the live file always wins, since K3s releases differ.
var K3sChain = []byte(`{
  "name": "cbr0",
  "cniVersion": "1.0.0",
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "forceAddress": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}}
  ]
}
`)

// ErrPrimaryHasNetready is returned (wrapped) by BuildOwned when the primary
// chain already holds netready: chaining it twice would run the gate twice,
// and the primary is not netready's to edit.
var ErrPrimaryHasNetready = errors.New("the primary conflist already holds a plugin of type \"netready\"")

// Settings are the installer's flags that shape netready's plugin object.
type Settings struct {
	Probes         []string // probe URLs, in order
	Timeout        string   // a Go duration, as given ("30s"); "" is config.DefaultTimeout
	OnTimeout      string   // "fail" or "allow"
	SkipNamespaces []string // pods of these namespaces pass ungated
	LogFile        string   // absolute path; "" logs to stderr
	PodWatch       *PodWatch
}

// pluginObject fixes the key order of the generated object, so the file
// reads as the shipped conflists do and a second run writes the same bytes.
type pluginObject struct {
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities"`
	Timeout      string          `json:"timeout"`
	OnTimeout    string          `json:"onTimeout"`
	Probes       []string        `json:"probes"`
	Skip         *skipObject     `json:"skip,omitempty"`
	LogFile      string          `json:"logFile,omitempty"`
	PodWatch     *PodWatch       `json:"podWatch,omitempty"`
}

type skipObject struct {
	Namespaces []string `json:"namespaces"`
}

// PluginObject returns netready's object for the chain, validated with
// config.Parse exactly as the plugin will parse it at ADD.
func PluginObject(s Settings) ([]byte, error) {
	o := pluginObject{
		Type:         "netready",
		Capabilities: map[string]bool{"io.kubernetes.cri.pod-annotations": true},
		Timeout:      s.Timeout,
		OnTimeout:    s.OnTimeout,
		Probes:       s.Probes,
		LogFile:      s.LogFile,
		PodWatch:     s.PodWatch,
	}
	if o.Timeout == "" {
		// Written out, so an operator reading the chain sees the budget;
		// in seconds, as a person writes it ("60s", not "1m0s").
		o.Timeout = strconv.Itoa(int(config.DefaultTimeout/time.Second)) + "s"
	}
	if o.OnTimeout == "" {
		o.OnTimeout = "fail"
	}
	if o.Probes == nil {
		o.Probes = []string{}
	}
	if len(s.SkipNamespaces) > 0 {
		o.Skip = &skipObject{Namespaces: s.SkipNamespaces}
	}
	b, err := json.Marshal(o)
	if err != nil { // cannot happen: strings, lists and booleans only
		return nil, err
	}
	if _, err := config.Parse(b); err != nil {
		return nil, fmt.Errorf("the netready config built from the flags is invalid (%v): fix --probe, --timeout, --on-timeout, --skip-namespace or --log-file", err)
	}
	return b, nil
}

// BuildOwned returns the owned conflist: the primary chain (K3s's live
// 10-flannel.conflist) with the netready plugin object appended last. The
// primary's name, cniVersion, plugins and any field netready does not know
// are kept as they are; a primary that already holds netready is refused
// (ErrPrimaryHasNetready). The result is indented JSON ending in a newline.
func BuildOwned(primary, netready []byte) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(primary, &top); err != nil {
		return nil, fmt.Errorf("the primary conflist is not a JSON object: %v", err)
	}
	var name, version string
	if err := json.Unmarshal(top["name"], &name); err != nil || name == "" {
		return nil, errors.New(`the primary conflist has no "name" string: it is not a chain containerd would load`)
	}
	if err := json.Unmarshal(top["cniVersion"], &version); err != nil || version == "" {
		return nil, errors.New(`the primary conflist has no "cniVersion" string`)
	}
	var plugins []json.RawMessage
	if err := json.Unmarshal(top["plugins"], &plugins); err != nil || len(plugins) == 0 {
		return nil, errors.New(`the primary conflist has no "plugins" list: want a chain such as K3s's 10-flannel.conflist`)
	}
	for i, p := range plugins {
		var t struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(p, &t); err != nil {
			return nil, fmt.Errorf("the primary conflist's plugins[%d] is not an object: %v", i, err)
		}
		if t.Type == "netready" {
			return nil, fmt.Errorf("%w (plugins[%d])", ErrPrimaryHasNetready, i)
		}
	}
	plugins = append(plugins, json.RawMessage(netready))
	raw, err := json.Marshal(plugins)
	if err != nil {
		return nil, fmt.Errorf("the netready plugin object is not JSON: %v", err)
	}
	top["plugins"] = raw
	out, err := json.MarshalIndent(top, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// ChainHasNetready reports whether a conflist, parsed as libcni parses it,
// holds a plugin of type netready.
func ChainHasNetready(conflist []byte) bool {
	l, err := libcni.ConfListFromBytes(conflist)
	if err != nil {
		return false
	}
	for _, p := range l.Plugins {
		if p.Network.Type == "netready" {
			return true
		}
	}
	return false
}

// chainSummary names a chain's plugin types, for messages: "cbr0: flannel, portmap, bandwidth".
func chainSummary(conflist []byte) string {
	l, err := libcni.ConfListFromBytes(conflist)
	if err != nil {
		return "unparsable: " + err.Error()
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s (cniVersion %s):", l.Name, l.CNIVersion)
	for i, p := range l.Plugins {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(" " + p.Network.Type)
	}
	return b.String()
}
