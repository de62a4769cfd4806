package config

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
)

// FindPlugin returns netready's plugin object from a conflist (an object
// with "plugins") or from a single plugin object, as Parse expects it: the
// list's name and cniVersion are added when the object lacks them, as a
// runtime would. Errors are *types.Error, code 6 or 7.
func FindPlugin(conflistOrPlugin []byte) ([]byte, error) {
	top, err := decodeObject(conflistOrPlugin)
	if err != nil {
		return nil, err
	}
	rawPlugins, isList := top["plugins"]
	if !isList {
		if t := typeOf(top); t != "netready" {
			return nil, types.NewError(types.ErrInvalidNetworkConfig,
				fmt.Sprintf(`netready config: the object has type %q and no "plugins" list; want a conflist holding a plugin of type "netready", or that plugin`, clip(t)), "")
		}
		return bytes.Clone(conflistOrPlugin), nil
	}
	var plugins []map[string]json.RawMessage
	if err := json.Unmarshal(rawPlugins, &plugins); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, `netready config: "plugins": want a list of objects, got `+describe(rawPlugins), "")
	}
	found := -1
	for i, p := range plugins {
		if typeOf(p) != "netready" {
			continue
		}
		if found >= 0 {
			return nil, types.NewError(types.ErrInvalidNetworkConfig,
				fmt.Sprintf(`netready config: plugins[%d] and plugins[%d] are both of type "netready"; a chain needs it once, last`, found, i), "")
		}
		found = i
	}
	if found < 0 {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, `netready config: "plugins" holds no plugin of type "netready"`, "")
	}
	p := plugins[found]
	for _, k := range []string{"name", "cniVersion"} {
		if _, ok := p[k]; !ok && top[k] != nil {
			p[k] = top[k]
		}
	}
	out, err := json.Marshal(p)
	if err != nil { // cannot happen: every value came out of json.Unmarshal
		return nil, types.NewError(types.ErrDecodingFailure, "netready config: "+err.Error(), "")
	}
	return out, nil
}

func typeOf(obj map[string]json.RawMessage) string {
	var t string
	_ = json.Unmarshal(obj["type"], &t)
	return t
}
