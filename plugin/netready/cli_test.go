package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/netready/netready/internal/testns"
)

// TestCLICheck runs `netready check` against a real netns whose gateway
// answers, with the pod read from the netns and from a prevResult file.
func TestCLICheck(t *testing.T) {
	pod, netns := testns.New(t, "cli-pod")
	peer, _ := testns.New(t, "cli-peer")
	run(t, "ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "gw0", "netns", peer)
	run(t, "ip", "-n", pod, "addr", "add", "10.99.0.2/24", "dev", "eth0")
	run(t, "ip", "-n", peer, "addr", "add", "10.99.0.1/24", "dev", "gw0")
	run(t, "ip", "-n", peer, "link", "set", "gw0", "up")
	run(t, "ip", "-n", pod, "link", "set", "eth0", "up")
	run(t, "ip", "-n", pod, "route", "add", "default", "via", "10.99.0.1")

	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	conf := write("conf.json", `{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"bridge"},`+
		`{"type":"netready","timeout":"2s","probes":["icmp://10.99.0.1","tcp://10.99.0.1:9?refused=ok"]}]}`)
	prev := write("prev.json", `{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"eth0","sandbox":"x"}],`+
		`"ips":[{"address":"10.99.0.2/24","gateway":"10.99.0.1","interface":1}]}`)
	unreachable := write("unreachable.json", `{"type":"netready","timeout":"300ms","probes":["icmp://10.99.0.3"]}`)

	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"from the netns", []string{"--netns", netns, "--conf", conf}, exitReady, []string{
			`(?m)^link eth0 +yes `, `(?m)^gateway 10\.99\.0\.1 +yes `, `(?m)^icmp://10\.99\.0\.1 +yes `,
			`(?m)^tcp://10\.99\.0\.1:9\?refused=ok +yes `, `(?m)^ready after `}},
		{"from a prevResult", []string{"--netns", netns, "--conf", conf, "--prev-result", prev}, exitReady, []string{
			`(?m)^address 10\.99\.0\.2 on eth0 +yes `, `(?m)^gateway 10\.99\.0\.1 +yes `, `(?m)^ready after `}},
		// The unreachable target is the one line not ready, tried more than once.
		{"not ready", []string{"--netns", netns, "--conf", unreachable}, exitNotReady, []string{
			`(?m)^gateway 10\.99\.0\.1 +yes `, `(?m)^icmp://10\.99\.0\.3 +no +- +([2-9]|\d\d+) `, `(?m)^NOT READY after `}},
		{"no such netns", []string{"--netns", netns + "-gone", "--conf", conf}, exitCannot, []string{`netns \S+-gone does not exist`}},
		{"bad config", []string{"--netns", netns, "--conf", write("bad.json", `{"type":"netready","probe":[]}`)}, exitUsage,
			[]string{`"probe": unknown field`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			code := runCLI(append([]string{"check"}, tc.args...), &out, &out)
			if code != tc.code {
				t.Errorf("exit %d, want %d:\n%s", code, tc.code, out.String())
			}
			for _, w := range tc.want {
				if !regexp.MustCompile(w).MatchString(out.String()) {
					t.Errorf("output does not match %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	testns.Run(t, args[0], args[1:]...)
}
