package config

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestFindPlugin(t *testing.T) {
	tests := []struct {
		name, in string
		want     map[string]any
	}{
		{"conflist", `{"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
			{"type": "flannel", "delegate": {"isDefaultGateway": true}},
			{"type": "portmap", "capabilities": {"portMappings": true}},
			{"type": "netready", "timeout": "20s"}]}`,
			map[string]any{"cniVersion": "1.0.0", "name": "cbr0", "type": "netready", "timeout": "20s"}},
		{"plugin keeps its own version", `{"cniVersion": "1.0.0", "name": "cbr0", "plugins": [{"type": "netready", "cniVersion": "0.4.0"}]}`,
			map[string]any{"cniVersion": "0.4.0", "name": "cbr0", "type": "netready"}},
		{"list without name", `{"plugins": [{"type": "netready"}]}`, map[string]any{"type": "netready"}},
		{"single plugin", `{"type": "netready", "probes": ["icmp://10.0.0.1"]}`,
			map[string]any{"type": "netready", "probes": []any{"icmp://10.0.0.1"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := FindPlugin([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("FindPlugin returned %s: %v", out, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("FindPlugin = %v, want %v", got, tt.want)
			}
			if _, err := Parse(out); err != nil {
				t.Errorf("Parse(FindPlugin(...)): %v", err)
			}
		})
	}
}

func TestFindPluginErrors(t *testing.T) {
	tests := []struct {
		name, in string
		code     uint
		want     string
	}{
		{"not JSON", `{`, types.ErrDecodingFailure, "not JSON"},
		{"not an object", `[]`, types.ErrDecodingFailure, "want a JSON object"},
		{"other plugin", `{"type": "bridge"}`, types.ErrInvalidNetworkConfig, `type "bridge" and no "plugins" list`},
		{"no netready", `{"plugins": [{"type": "bridge"}, null]}`, types.ErrInvalidNetworkConfig, `holds no plugin of type "netready"`},
		{"twice", `{"plugins": [{"type": "netready"}, {"type": "netready"}]}`, types.ErrInvalidNetworkConfig, `plugins[0] and plugins[1] are both`},
		{"plugins not a list", `{"plugins": {"type": "netready"}}`, types.ErrInvalidNetworkConfig, `"plugins": want a list of objects, got an object`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := FindPlugin([]byte(tt.in))
			var te *types.Error
			if !errors.As(err, &te) || te.Code != tt.code || !strings.Contains(te.Msg, tt.want) {
				t.Errorf("FindPlugin error = %v, want code %d containing %q", err, tt.code, tt.want)
			}
		})
	}
}
