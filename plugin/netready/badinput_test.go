package main_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netready/netready/internal/testbin"
	"github.com/netready/netready/internal/testns"
)

// TestBadInput runs the built binary as a runtime would (env and stdin) with input that is
// wrong in every way a runtime, an operator's conflist or a pod's annotations can make it wrong.
// Each row must end in a JSON CNI error on stdout with the expected code and a message naming
// the problem, exit non-zero, print no panic, stay under 64 KiB of output, and be done well within
// a second. A few rows show where bad input is not an error: DEL always succeeds, a prevResult
// with nothing to wait for passes, and without CNI_COMMAND the binary is the operator's CLI.
//
// Rows with a non-empty bug field document a product bug: they assert the right behaviour, so
// they fail until the bug is fixed. Search for `bug:`.
func TestBadInput(t *testing.T) {
	bin := testbin.Netready(t)
	root := os.Geteuid() == 0

	// As root, every row runs inside a netns made for the test, never in the root netns, so that
	// a row that got past parsing by mistake could not probe from the machine itself.
	var runner, pod string // netns paths; empty when not root
	if root {
		_, runner = testns.New(t, "badinput-run")
		_, pod = testns.New(t, "badinput-pod")
	}
	dir := t.TempDir()
	noNetns := filepath.Join(dir, "no-such-netns")
	regular := filepath.Join(dir, "regular-file")
	if err := os.WriteFile(regular, []byte("not a netns\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	pr := func(mod func(map[string]any)) map[string]any { return prevResult(noNetns, mod) }
	ann := func(policy map[string]any, a map[string]string) []byte {
		return conf(func(c map[string]any) {
			if policy != nil {
				c["annotations"] = policy
			}
			c["runtimeConfig"] = map[string]any{"io.kubernetes.cri.pod-annotations": a}
		})
	}
	field := func(k string, v any) []byte { return conf(func(c map[string]any) { c[k] = v }) }
	probes := func(p ...string) []byte { return field("probes", p) }
	withPrev := func(mod func(map[string]any)) []byte {
		return conf(func(c map[string]any) { c["prevResult"] = pr(mod) })
	}
	version := func(v any) []byte { return conf(func(c map[string]any) { c["cniVersion"] = v }) }

	const mib = 1 << 20
	tests := []badCase{
		// stdin
		{name: "stdin empty", stdin: []byte{}, code: 6, msg: "unexpected end of JSON input"},
		{name: "stdin truncated", stdin: conf(nil)[:60], code: 6, msg: "unexpected end of JSON input"},
		{name: "stdin not JSON", stdin: []byte("cniVersion=1.0.0\n"), code: 6, msg: "invalid character"},
		{name: "stdin binary", stdin: []byte("\x00\x01\xff{\"name\":"), code: 6, msg: "invalid character"},
		{name: "stdin a JSON list", stdin: []byte(`[{"name":"cbr0","type":"netready"}]`), code: 6, msg: "cannot unmarshal array"},
		{name: "stdin JSON null", stdin: []byte("null"), code: 7, msg: "missing network name"},
		{name: "stdin trailing garbage", stdin: append(conf(nil), "}x"...), code: 6, msg: "after top-level value"},
		{name: "stdin huge junk 8MiB", stdin: bytes.Repeat([]byte("x"), 8*mib), code: 6, msg: "invalid character 'x'"},
		{name: "stdin huge nesting 4MiB", stdin: []byte(`{"name":"cbr0","a":` + strings.Repeat("[", 2*mib) + strings.Repeat("]", 2*mib) + "}"),
			code: 6, msg: "exceeded max depth"},
		{name: "stdin huge valid 8MiB with a bad timeout", stdin: conf(func(c map[string]any) {
			c["example.com/padding"] = strings.Repeat("a", 8*mib)
			c["timeout"] = "201s"
		}), code: 7, msg: `"timeout": 3m21s is more than the maximum 3m20s`},
		{name: "stdin huge 20000 probes with one duplicate", stdin: probes(append(manyProbes(20000), "icmp://10.0.0.1")...),
			code: 7, msg: `"probes[20000]": icmp://10.0.0.1 is probes[0] again`},
		{name: "stdin huge 30000 unknown fields", stdin: conf(func(c map[string]any) {
			for i := range 30000 {
				c[fmt.Sprintf("unknown%d", i)] = i
			}
		}), code: 7, msg: `"unknown0": unknown field`},
		{name: "stdin huge 100000 invalid probes", stdin: probes(func() []string {
			var p []string
			for i := range 100000 {
				p = append(p, fmt.Sprintf("db%d:5432", i))
			}
			return p
		}()...), code: 7, msg: `"probes[0]": probe "db0:5432": not a probe URL`},

		// environment
		{name: "CNI_COMMAND missing", env: map[string]string{"CNI_COMMAND": ""}, cli: true},
		{name: "CNI_COMMAND unknown verb", env: map[string]string{"CNI_COMMAND": "FROB"}, code: 4, msg: "unknown CNI_COMMAND: FROB"},
		{name: "CNI_COMMAND lower case", env: map[string]string{"CNI_COMMAND": "add"}, code: 4, msg: "unknown CNI_COMMAND: add"},
		{name: "CNI_CONTAINERID missing", env: map[string]string{"CNI_CONTAINERID": ""}, code: 4, msg: "[CNI_CONTAINERID] missing"},
		{name: "CNI_CONTAINERID invalid chars", env: map[string]string{"CNI_CONTAINERID": "../../etc/passwd"}, code: 4, msg: "invalid characters in containerID"},
		{name: "CNI_CONTAINERID leading dash", env: map[string]string{"CNI_CONTAINERID": "-rf"}, code: 4, msg: "invalid characters in containerID"},
		{name: "CNI_NETNS missing", env: map[string]string{"CNI_NETNS": ""}, code: 4, msg: "[CNI_NETNS] missing"},
		{name: "CNI_NETNS does not exist", code: 8, msg: "CNI_NETNS: netns " + noNetns + " does not exist"},
		{name: "CNI_NETNS a regular file", env: map[string]string{"CNI_NETNS": regular}, code: 8, msg: "CNI_NETNS: netns " + regular, msg2: "not a network namespace"},
		{name: "CNI_NETNS a directory", env: map[string]string{"CNI_NETNS": dir}, code: 8, msg: "CNI_NETNS: netns " + dir, msg2: "not a network namespace"},
		{name: "CNI_NETNS the plugin's own", env: map[string]string{"CNI_NETNS": "/proc/self/ns/net"}, code: 8,
			msg: "CNI_NETNS /proc/self/ns/net is the plugin's own netns", root: "runs the plugin in a netns made for the test, so that its own netns is not the machine's"},
		// netready makes skel's check itself (skel's is off: it costs the runtime at reaping), so a
		// pod with nothing to wait for is refused as before, and CHECK too.
		{name: "CNI_NETNS the plugin's own, pod skipped", stdin: field("skip", map[string]any{"namespaces": []string{"default"}}),
			env: map[string]string{"CNI_NETNS": "/proc/self/ns/net"}, code: 8,
			msg: "CNI_NETNS /proc/self/ns/net is the plugin's own netns", root: "runs the plugin in a netns made for the test, so that its own netns is not the machine's"},
		{name: "CHECK CNI_NETNS the plugin's own", verb: "CHECK", env: map[string]string{"CNI_NETNS": "/proc/self/ns/net"}, code: 8,
			msg: "CNI_NETNS /proc/self/ns/net is the plugin's own netns", root: "runs the plugin in a netns made for the test, so that its own netns is not the machine's"},
		{name: "CNI_IFNAME missing", env: map[string]string{"CNI_IFNAME": ""}, code: 4, msg: "[CNI_IFNAME] missing"},
		{name: "CNI_IFNAME too long", env: map[string]string{"CNI_IFNAME": "eth0123456789abc"}, code: 4, msg: "interface name is too long"},
		{name: "CNI_IFNAME with slash", env: map[string]string{"CNI_IFNAME": "eth0/1"}, code: 4, msg: "contains / or :"},
		{name: "CNI_PATH missing", env: map[string]string{"CNI_PATH": ""}, code: 4, msg: "[CNI_PATH] missing"},
		{name: "CHECK CNI_NETNS missing", verb: "CHECK", env: map[string]string{"CNI_NETNS": ""}, code: 4, msg: "[CNI_NETNS] missing"},
		{name: "DEL CNI_CONTAINERID missing", verb: "DEL", env: map[string]string{"CNI_CONTAINERID": ""}, code: 4, msg: "[CNI_CONTAINERID] missing"},

		// versions
		{name: "cniVersion 9.9.9", stdin: version("9.9.9"), code: 1, msg: `config is "9.9.9", plugin supports`},
		{name: "cniVersion 0.2.0", stdin: version("0.2.0"), code: 1, msg: `config is "0.2.0"`},
		{name: "cniVersion 0.1.0", stdin: version("0.1.0"), code: 1, msg: `config is "0.1.0"`},
		{name: "cniVersion missing", stdin: version(nil), code: 1, msg: `config is "0.1.0"`}, // the spec's default
		{name: "cniVersion not a version", stdin: version("one"), code: 1, msg: `config is "one"`},
		{name: "cniVersion a number", stdin: version(1.0), code: 6, msg: "cniVersion"},
		{name: "CHECK at 0.3.1", verb: "CHECK", stdin: version("0.3.1"), code: 1, msg: "config version does not allow CHECK"},
		{name: "STATUS at 1.0.0", verb: "STATUS", stdin: version("1.0.0"), code: 1, msg: "config version does not allow STATUS"},
		{name: "GC at 0.4.0", verb: "GC", stdin: version("0.4.0"), code: 1, msg: "config version does not allow GC"},
		{name: "name missing", stdin: field("name", nil), code: 7, msg: "missing network name"},
		{name: "name invalid chars", stdin: field("name", "cbr0; rm -rf"), code: 7, msg: "invalid characters found in network name"},

		// prevResult
		{name: "prevResult missing", stdin: field("prevResult", nil), code: 7, msg: "no prevResult in its config; put it last in the plugins list"},
		{name: "CHECK prevResult missing", verb: "CHECK", stdin: field("prevResult", nil), code: 7, msg: "no prevResult"},
		{name: "prevResult a string", stdin: field("prevResult", "10.42.0.5/24"), code: 7, msg: `"prevResult": want an object, got the string`},
		{name: "prevResult ips not a list", stdin: withPrev(func(p map[string]any) { p["ips"] = "10.42.0.5/24" }), code: 6, msg: "prevResult (the result of the plugin before netready in conflist \"cbr0\", passed on by the runtime) is not usable: ", msg2: "check that plugin"},
		{name: "prevResult address malformed", stdin: withPrev(func(p map[string]any) {
			p["ips"] = []any{map[string]any{"address": "10.42.0.300/24", "interface": 2}}
		}), code: 6, msg: "prevResult (the result of the plugin before netready in conflist \"cbr0\", passed on by the runtime) is not usable: ", msg2: "check that plugin"},
		{name: "prevResult address missing", stdin: withPrev(func(p map[string]any) {
			p["ips"] = []any{map[string]any{"gateway": "10.42.0.1", "interface": 2}}
		}), code: 6, msg: "prevResult (the result of the plugin before netready in conflist \"cbr0\", passed on by the runtime) is not usable: ips[0] has no address"},
		{name: "prevResult interfaces not a list", stdin: withPrev(func(p map[string]any) { p["interfaces"] = 3 }), code: 6, msg: "prevResult (the result of the plugin before netready in conflist \"cbr0\", passed on by the runtime) is not usable: ", msg2: "check that plugin"},
		{name: "prevResult interface index out of range", stdin: withPrev(func(p map[string]any) {
			p["ips"] = []any{map[string]any{"address": "10.42.0.5/24", "interface": 7}}
		}), code: 7, msg: "prevResult (the result of the plugin before netready in conflist \"cbr0\", passed on by the runtime) is not usable: ips[0].interface is 7, but there are 3 interfaces"},
		{name: "prevResult interface index negative", stdin: withPrev(func(p map[string]any) {
			p["ips"] = []any{map[string]any{"address": "10.42.0.5/24", "interface": -1}}
		}), code: 7, msg: "prevResult (the result of the plugin before netready in conflist \"cbr0\", passed on by the runtime) is not usable: ips[0].interface is -1"},
		{name: "prevResult no IPs, no netns", stdin: withPrev(func(p map[string]any) { delete(p, "ips") }),
			code: 8, msg: "CNI_NETNS: netns " + noNetns + " does not exist"},
		{name: "prevResult no IPs, an empty netns, nothing to wait for", env: map[string]string{"CNI_NETNS": pod},
			stdin: conf(func(c map[string]any) {
				c["probes"] = []string{}
				c["prevResult"] = map[string]any{"cniVersion": "1.0.0"}
			}),
			ok: true, root: "needs a real pod netns"},
		{name: "prevResult no IPs, eth0 missing in the netns", env: map[string]string{"CNI_NETNS": pod},
			stdin: conf(func(c map[string]any) {
				c["timeout"] = "300ms"
				c["probes"] = []string{}
				c["prevResult"] = prevResult(pod, func(p map[string]any) { delete(p, "ips"); delete(p, "routes") })
			}), code: 11, msg: "link eth0", root: "needs a real pod netns", slow: true},
		// The netns has no route: the probe fails locally, sending nothing.
		{name: "timeout says how to reproduce", env: map[string]string{"CNI_NETNS": pod},
			stdin: conf(func(c map[string]any) {
				c["timeout"] = "300ms"
				c["probes"] = []string{"tcp://192.0.2.1:80"}
				c["prevResult"] = map[string]any{"cniVersion": "1.0.0"}
			}), code: 11, msg: "pod network not ready after 3",
			msg2: "tcp://192.0.2.1:80: network is unreachable (", root: "needs a real pod netns", slow: true},
		{name: "timeout names the netns and the network", env: map[string]string{"CNI_NETNS": pod},
			stdin: conf(func(c map[string]any) {
				c["timeout"] = "300ms"
				c["probes"] = []string{"tcp://192.0.2.1:80"}
				c["prevResult"] = map[string]any{"cniVersion": "1.0.0"}
			}), code: 11, msg: "; to reproduce while the sandbox exists: netready check --netns " + pod + " --conf CONFLIST",
			msg2: `(CONFLIST: the conflist named "cbr0" in the runtime's CNI conf dir`, root: "needs a real pod netns", slow: true},

		// the config
		{name: "config unknown field", stdin: field("probe", []string{"icmp://10.0.0.1"}), code: 7, msg: `"probe": unknown field; did you mean "probes"?`},
		{name: "config unknown nested field", stdin: field("skip", map[string]any{"namespace": []string{"kube-system"}}), code: 7,
			msg: `"skip.namespace": unknown field; did you mean "namespaces"?`},
		{name: "config timeout not a duration", stdin: field("timeout", "30"), code: 7, msg: `"timeout": want a positive Go duration such as "30s"`},
		{name: "config timeout a number", stdin: field("timeout", 30), code: 7, msg: `"timeout": want a positive Go duration such as "30s", "500ms" or "1m30s", got the number 30`},
		{name: "config timeout negative", stdin: field("timeout", "-1s"), code: 7, msg: `"timeout": want a positive Go duration`},
		{name: "config timeout above 200s", stdin: field("timeout", "4m"), code: 7, msg: `"timeout": 4m0s is more than the maximum 3m20s`},
		{name: "config interval above maxInterval", stdin: conf(func(c map[string]any) { c["interval"] = "100ms"; c["maxInterval"] = "50ms" }),
			code: 7, msg: `"interval": 100ms is more than "maxInterval" 50ms`},
		{name: "config interval too small", stdin: field("interval", "10us"), code: 7, msg: `"interval": 10µs is less than 1ms`},
		{name: "config attemptTimeout bad", stdin: field("attemptTimeout", "soon"), code: 7, msg: `"attemptTimeout": want a positive Go duration`},
		{name: "config onTimeout bad", stdin: field("onTimeout", "retry"), code: 7, msg: `"onTimeout": want "fail"`},
		{name: "config gateway not a boolean", stdin: field("gateway", "yes"), code: 7, msg: `"gateway": want true or false, got the string "yes"`},
		{name: "config probes not a list", stdin: field("probes", "icmp://10.0.0.1"), code: 7, msg: `"probes": want a list of probe URLs`},
		{name: "config probe not a string", stdin: field("probes", []any{1}), code: 7, msg: `"probes[0]": want a string, got the number 1`},
		{name: "config probe hostname", stdin: probes("tcp://db.example:5432"), code: 7,
			msg: `"probes[0]": probe "tcp://db.example:5432": host "db.example" is not an IP address; probes need an IP literal such as tcp://10.0.0.5:5432`},
		{name: "config probe hostname with password", stdin: probes("https://admin:s3cretPW@db.example/"), code: 7,
			msg: "is not an IP address", secret: "s3cretPW"},
		{name: "config probe port out of range", stdin: probes("tcp://10.0.0.1:70000"), code: 7, msg: "port 70000 out of range 1-65535"},
		{name: "config probe tcp without port", stdin: probes("tcp://10.0.0.1"), code: 7, msg: "tcp needs a port, such as tcp://10.0.0.1:5432"},
		{name: "config probe unknown scheme", stdin: probes("udp://10.0.0.1:53"), code: 7, msg: `unknown scheme "udp"; use icmp, tcp, dns, http or https`},
		{name: "config probe duplicate", stdin: probes("tcp://10.0.0.1:80", "tcp://10.0.0.1:80?"), code: 7, msg: `"probes[1]": tcp://10.0.0.1:80 is probes[0] again`},
		{name: "config rule without selector", stdin: field("rules", []any{map[string]any{"timeout": "5s"}}), code: 7,
			msg: `"rules[0]": a rule needs "namespaces" or "pods"`},
		{name: "config rule timeout above 200s", stdin: field("rules", []any{map[string]any{"namespaces": []string{"db"}, "timeout": "5m"}}), code: 7,
			msg: `"rules[0].timeout": 5m0s is more than the maximum`},
		{name: "config rules not a list", stdin: field("rules", map[string]any{}), code: 7, msg: `"rules": want a list of objects`},
		{name: "config skip pattern without namespace", stdin: field("skip", map[string]any{"pods": []string{"coredns-*"}}), code: 7,
			msg: `"skip.pods[0]": want "namespace/name"`},
		{name: "config skip namespace upper case", stdin: field("skip", map[string]any{"namespaces": []string{"Kube_System"}}), code: 7,
			msg: `"skip.namespaces[0]": want a namespace name`},
		{name: "config annotations.maxTimeout above 200s", stdin: field("annotations", map[string]any{"maxTimeout": "10m"}), code: 7,
			msg: `"annotations.maxTimeout": 10m0s is more than the maximum`},
		{name: "config annotations.maxProbes negative", stdin: field("annotations", map[string]any{"maxProbes": -1}), code: 7,
			msg: `"annotations.maxProbes": want 0 or more`},
		{name: "config annotations not an object", stdin: field("annotations", true), code: 7, msg: `"annotations": want an object`},
		{name: "config logFile relative", stdin: field("logFile", "netready.log"), code: 7, msg: `"logFile": want an absolute path`},
		{name: "config ipam wrong type", stdin: field("ipam", "host-local"), code: 7, msg: `"ipam": want an object`},
		{name: "config annotations map wrong type", stdin: field("runtimeConfig", map[string]any{
			"io.kubernetes.cri.pod-annotations": map[string]any{"netready.dev/timeout": 30}}), code: 7, msg: `"runtimeConfig": want an object`},
		{name: "config every error at once", stdin: conf(func(c map[string]any) {
			c["timeout"] = "forever"
			c["onTimeout"] = "maybe"
			c["probes"] = []string{"tcp://db:1"}
		}), code: 7, msg: `"timeout": `, msg2: `"onTimeout": `},
		{name: "STATUS invalid config", verb: "STATUS", stdin: conf(func(c map[string]any) { c["cniVersion"] = "1.1.0"; c["timout"] = "5s" }), code: 7,
			msg: `"timout": unknown field; did you mean "timeout"?`},
		{name: "CHECK invalid config", verb: "CHECK", stdin: field("onTimeout", "retry"), code: 7, msg: `"onTimeout": want "fail"`},

		// pod annotations, through runtimeConfig
		{name: "annotation too many probes", stdin: ann(map[string]any{"maxProbes": 2},
			map[string]string{"netready.dev/probes": "icmp://10.0.0.1,icmp://10.0.0.2,icmp://10.0.0.3"}), code: 7,
			msg: `pod annotation "netready.dev/probes": adds 2 probes, 3 in all, more than annotations.maxProbes 2`},
		{name: "annotation timeout above the cap", stdin: ann(map[string]any{"maxTimeout": "20s"},
			map[string]string{"netready.dev/timeout": "90s"}), code: 7,
			msg: `pod annotation "netready.dev/timeout": "90s" is more than annotations.maxTimeout 20s`},
		{name: "annotation timeout not a duration", stdin: ann(nil, map[string]string{"netready.dev/timeout": "soon"}), code: 7,
			msg: `pod annotation "netready.dev/timeout"`},
		{name: "annotation skip without allowSkip", stdin: ann(nil, map[string]string{"netready.dev/skip": "true"}), code: 7,
			msg: `pod annotation "netready.dev/skip": "true" is not allowed: annotations.allowSkip is false`},
		{name: "annotation skip not a boolean", stdin: ann(map[string]any{"allowSkip": true}, map[string]string{"netready.dev/skip": "yes"}), code: 7,
			msg: `pod annotation "netready.dev/skip"`},
		{name: "annotation unknown key", stdin: ann(nil, map[string]string{"netready.dev/probe": "icmp://10.0.0.1"}), code: 7,
			msg: `pod annotation "netready.dev/probe": unknown netready annotation; did you mean "netready.dev/probes"?`},
		{name: "annotation malformed probe", stdin: ann(nil, map[string]string{"netready.dev/probes": "icmp://10.0.0.1, tcp://10.0.0.2"}), code: 7,
			msg: `pod annotation "netready.dev/probes": probe "tcp://10.0.0.2": tcp needs a port`},
		{name: "annotation probe hostname with password", stdin: ann(nil, map[string]string{"netready.dev/probes": "http://u:s3cretPW@api.internal:8080/health"}), code: 7,
			msg: "is not an IP address", secret: "s3cretPW"},
		{name: "annotation 10000 unknown keys", stdin: ann(nil, func() map[string]string {
			m := map[string]string{}
			for i := range 10000 { // ~250 KiB, the API server's cap on a pod's annotations
				m[fmt.Sprintf("netready.dev/key%d", i)] = "v"
			}
			return m
		}()), code: 7, msg: `pod annotation "netready.dev/key0": unknown netready annotation`},
		{name: "annotation 15000 probes", stdin: ann(nil, map[string]string{"netready.dev/probes": strings.Join(manyProbes(15000), ",")}), code: 7,
			msg: "lists 15000 probes, more than annotations.maxProbes 8"},

		// CNI_ARGS
		{name: "CNI_ARGS pair without =", env: map[string]string{"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE"}, code: 4,
			msg: `CNI_ARGS: "K8S_POD_NAMESPACE" is not KEY=VALUE`},
		{name: "CNI_ARGS empty key", env: map[string]string{"CNI_ARGS": "=default"}, code: 4, msg: `CNI_ARGS: "=default" is not KEY=VALUE`},
		{name: "CNI_ARGS name twice", env: map[string]string{"CNI_ARGS": "K8S_POD_NAME=a;K8S_POD_NAME=b"}, code: 4, msg: "CNI_ARGS: K8S_POD_NAME given twice"},
		{name: "CHECK CNI_ARGS malformed", verb: "CHECK", env: map[string]string{"CNI_ARGS": "junk"}, code: 4, msg: `CNI_ARGS: "junk"`},

		// DEL always succeeds once skel accepts the call: netready created nothing.
		{name: "DEL CNI_ARGS malformed", verb: "DEL", env: map[string]string{"CNI_ARGS": "junk"}, ok: true},
		{name: "DEL invalid config", verb: "DEL", stdin: field("timeout", "forever"), ok: true},
		{name: "DEL without netns", verb: "DEL", env: map[string]string{"CNI_NETNS": ""}, ok: true},
		{name: "DEL in the plugin's own netns", verb: "DEL", env: map[string]string{"CNI_NETNS": "/proc/self/ns/net"}, ok: true,
			root: "runs the plugin in a netns made for the test, so that its own netns is not the machine's"},
	}
	if len(tests) < 40 {
		t.Fatalf("%d cases, want at least 40", len(tests))
	}

	var mu sync.Mutex
	var slowest time.Duration
	var slowestName string
	t.Cleanup(func() { t.Logf("slowest row: %v (%s)", slowest, slowestName) })
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.root != "" && !root {
				t.Skip("needs root: " + tc.root)
			}
			env := map[string]string{
				"CNI_COMMAND":     "ADD",
				"CNI_CONTAINERID": "0123456789abcdef0123456789abcdef",
				"CNI_NETNS":       noNetns,
				"CNI_IFNAME":      "eth0",
				"CNI_PATH":        "/opt/cni/bin",
				"CNI_ARGS":        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=0123456789abcdef",
			}
			if tc.verb != "" {
				env["CNI_COMMAND"] = tc.verb
			}
			for k, v := range tc.env {
				env[k] = v
			}
			stdin := tc.stdin
			if stdin == nil {
				stdin = conf(nil)
			}
			r, err := testbin.Run(t.Context(), testbin.Call{Binary: bin, Env: env, Stdin: stdin, NetNS: runner})
			t.Logf("took %v, %v CPU: %s", r.Took, r.CPU, tc.name)

			mu.Lock()
			if r.Took > slowest {
				slowest, slowestName = r.Took, tc.name
			}
			mu.Unlock()
			tc.check(t, r, err, stdin)
		})
	}
}

type badCase struct {
	name  string
	verb  string            // CNI_COMMAND; default ADD
	env   map[string]string // overrides; "" unsets
	stdin []byte            // default: a valid plugin object (conf(nil))

	code      uint   // the CNI error code expected
	msg, msg2 string // substrings of the error's msg and details, as printed (JSON-escaped)
	ok        bool   // success expected instead: exit 0, stdout empty (DEL) or the prevResult (ADD)
	cli       bool   // no CNI_COMMAND: the operator's command line answers (usage, exit 2)
	secret    string // must appear in neither stdout nor stderr
	root      string // why the row needs root (it is skipped without)
	slow      bool   // waits for netready's own timeout
	bug       string // a product bug this row documents (it fails until fixed)
}

// maxOutput bounds what one invocation prints: a runtime copies the error into the pod's events
// and its own log, and netready logs it again.
const maxOutput = 64 << 10

// maxCPU bounds the CPU time one invocation spends on bad input. The largest well-handled rows
// (8 MiB of stdin) take about a tenth of a second on an idle machine and 0.3 s while make test runs
// other packages beside them (CPU time grows with contention too); what this guards against is
// work that grows faster than the input (a quadratic check over 100,000 probes takes minutes), so
// the bound is generous.
const maxCPU = time.Second

func (tc badCase) check(t *testing.T, r testbin.Result, runErr error, stdin []byte) {
	t.Helper()
	errorf := t.Errorf
	if tc.bug != "" {
		errorf = func(format string, args ...any) {
			t.Errorf("PRODUCT BUG (%s): "+format, append([]any{tc.bug}, args...)...)
		}
	}
	stdout, stderr := r.Stdout, r.Stderr
	short := func(b []byte) string {
		if len(b) > 600 {
			return fmt.Sprintf("%s... (%d bytes)", b[:600], len(b))
		}
		return string(b)
	}
	for name, out := range map[string][]byte{"stdout": stdout, "stderr": stderr} {
		if bytes.Contains(out, []byte("panic")) || bytes.Contains(out, []byte("goroutine ")) {
			errorf("%s holds a panic: %s", name, short(out))
		}
		if len(out) > maxOutput {
			errorf("%s is %d bytes, want at most %d", name, len(out), maxOutput)
		}
		if tc.secret != "" && bytes.Contains(out, []byte(tc.secret)) {
			errorf("%s shows the password %q: %s", name, tc.secret, short(out))
		}
	}
	// "Within a second": wall-clock time with room for a loaded CI machine, and CPU time, which
	// load hardly changes, against what a node running many sandboxes can spend on bad input.
	limit := 2 * time.Second
	if tc.slow {
		limit += time.Second
	}
	if r.Took > limit {
		errorf("took %v, want at most %v", r.Took, limit)
	}
	if r.CPU > maxCPU {
		errorf("used %v of CPU, want at most %v", r.CPU, maxCPU)
	}
	if runErr != nil {
		t.Fatalf("running the plugin: %v", runErr)
	}

	switch {
	case tc.cli:
		if r.Exit != 2 || len(stdout) != 0 || !bytes.Contains(stderr, []byte("CNI_COMMAND set")) {
			errorf("exit %d, stdout %q, stderr %q; want the usage (naming CNI_COMMAND) on stderr and exit 2", r.Exit, short(stdout), short(stderr))
		}
		return
	case tc.ok:
		if r.Exit != 0 {
			errorf("exit %d, stdout %s, stderr %s; want success", r.Exit, short(stdout), short(stderr))
			return
		}
		if tc.verb == "DEL" {
			if len(bytes.TrimSpace(stdout)) != 0 {
				errorf("DEL printed %s, want nothing", short(stdout))
			}
			return
		}
		var in struct{ PrevResult map[string]any }
		var out map[string]any
		if err := json.Unmarshal(stdin, &in); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(stdout, &out); err != nil || !reflect.DeepEqual(out, in.PrevResult) {
			errorf("stdout %s (%v), want the prevResult %v", short(stdout), err, in.PrevResult)
		}
		return
	}

	if r.Exit == 0 {
		errorf("exit 0, stdout %s; want an error", short(stdout))
	}
	var e struct {
		Code    *uint  `json:"code"`
		Msg     string `json:"msg"`
		Details string `json:"details"`
	}
	dec := json.NewDecoder(bytes.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil || e.Code == nil {
		errorf("stdout is no CNI error (%v): %s; stderr %s", err, short(stdout), short(stderr))
		return
	}
	if *e.Code != tc.code {
		errorf("code %d (%s), want %d", *e.Code, short(stdout), tc.code)
	}
	for _, want := range []string{tc.msg, tc.msg2} {
		if !strings.Contains(e.Msg+"\n"+e.Details, want) {
			errorf("error %s does not say %s", short(stdout), want)
		}
	}
}

// conf is a valid netready plugin object as a runtime hands it over (name and cniVersion of the
// list, prevResult, runtimeConfig), changed by mod; a nil value deletes the key.
func conf(mod func(map[string]any)) []byte {
	c := map[string]any{
		"cniVersion":   "1.0.0",
		"name":         "cbr0",
		"type":         "netready",
		"capabilities": map[string]any{"io.kubernetes.cri.pod-annotations": true},
		"timeout":      "5s",
		"probes":       []string{"icmp://10.0.0.1"},
		"prevResult":   prevResult("/var/run/netns/no-such-pod", nil),
		"runtimeConfig": map[string]any{
			"io.kubernetes.cri.pod-annotations": map[string]string{"team.example.com/owner": "db"},
		},
	}
	if mod != nil {
		mod(c)
	}
	for k, v := range c {
		if v == nil {
			delete(c, k)
		}
	}
	b, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	return b
}

// prevResult is what bridge (through flannel, portmap and bandwidth) hands on at 1.0.0.
func prevResult(sandbox string, mod func(map[string]any)) map[string]any {
	p := map[string]any{
		"cniVersion": "1.0.0",
		"interfaces": []any{
			map[string]any{"name": "cni0", "mac": "6a:3c:0e:41:5d:01"},
			map[string]any{"name": "veth1a2b3c4d", "mac": "6a:3c:0e:41:5d:02"},
			map[string]any{"name": "eth0", "mac": "6a:3c:0e:41:5d:03", "sandbox": sandbox},
		},
		"ips":    []any{map[string]any{"address": "10.42.0.5/24", "gateway": "10.42.0.1", "interface": 2}},
		"routes": []any{map[string]any{"dst": "10.42.0.0/16"}, map[string]any{"dst": "0.0.0.0/0", "gw": "10.42.0.1"}},
	}
	if mod != nil {
		mod(p)
	}
	return p
}

// manyProbes returns n distinct icmp probes, 10.0.0.1 first.
func manyProbes(n int) []string {
	p := make([]string, n)
	for i := range p {
		p[i] = fmt.Sprintf("icmp://10.%d.%d.%d", i/62500, i/250%250, i%250+1)
	}
	return p
}
