package main

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestReproduce(t *testing.T) {
	for _, c := range []struct{ netns, network, pod, want string }{
		{"/var/run/netns/cni-1f2e", "cbr0", "shop/web-0",
			`to reproduce while the sandbox exists: netready check --netns /var/run/netns/cni-1f2e --conf CONFLIST --pod shop/web-0` +
				` (CONFLIST: the conflist named "cbr0" in the runtime's CNI conf dir, on K3s /var/lib/rancher/k3s/agent/etc/cni/net.d)`},
		{"/proc/4242/ns/net", "", "",
			`to reproduce while the sandbox exists: netready check --netns /proc/4242/ns/net --conf CONFLIST` +
				` (CONFLIST: the conflist chaining netready in the runtime's CNI conf dir, on K3s /var/lib/rancher/k3s/agent/etc/cni/net.d)`},
		{"/run/netns/it's here", "cbr0", "/web",
			`to reproduce while the sandbox exists: netready check --netns '/run/netns/it'\''s here' --conf CONFLIST` +
				` (CONFLIST: the conflist named "cbr0" in the runtime's CNI conf dir, on K3s /var/lib/rancher/k3s/agent/etc/cni/net.d)`},
	} {
		if got := reproduce(c.netns, c.network, c.pod); got != c.want {
			t.Errorf("reproduce(%q, %q, %q)\n got %s\nwant %s", c.netns, c.network, c.pod, got, c.want)
		}
	}
}

func TestPrevResultError(t *testing.T) {
	for _, c := range []struct {
		name    string
		network string
		err     error
		code    uint
		want    string
	}{
		{"CNI error keeps its code", "cbr0", types.NewError(types.ErrInvalidNetworkConfig, "prevResult: ips[0].interface is 7, but there are 3 interfaces", ""), 7,
			`prevResult (the result of the plugin before netready in conflist "cbr0", passed on by the runtime) is not usable: ips[0].interface is 7, but there are 3 interfaces; check that plugin and the conflist's cniVersion (netready passes the result on untouched)`},
		{"plain error is a decoding failure", "", errors.New("json: cannot unmarshal string"), 6,
			`prevResult (the result of the plugin before netready in its conflist, passed on by the runtime) is not usable: json: cannot unmarshal string; check that plugin and the conflist's cniVersion (netready passes the result on untouched)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var te *types.Error
			if err := prevResultError(c.network, c.err); !errors.As(err, &te) || te.Code != c.code || te.Msg != c.want {
				t.Errorf("prevResultError = %v (%T), want code %d %q", err, err, c.code, c.want)
			}
		})
	}
}
