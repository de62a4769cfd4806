package netstate

import (
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

func withNetNS(t *testing.T, name string, fn func() error) error {
	t.Helper()
	return ns.WithNetNSPath("/var/run/netns/"+name, func(ns.NetNS) error { return fn() })
}
