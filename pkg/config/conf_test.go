package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// designExample is the plugin object of DESIGN.md, "Configuration".
const designExample = `{
  "type": "netready",
  "capabilities": {"io.kubernetes.cri.pod-annotations": true},
  "timeout": "30s",
  "onTimeout": "fail",
  "gateway": true,
  "defaultRoute": true,
  "probes": ["tcp://10.15.21.167:9000", "icmp://10.15.21.1"],
  "interval": "10ms",
  "maxInterval": "40ms",
  "attemptTimeout": "1s",
  "skip": {"namespaces": ["kube-system"]},
  "rules": [{"namespaces": ["analytics"], "probes": ["tcp://10.15.21.167:8123"], "timeout": "60s"}],
  "annotations": {"allow": true, "maxTimeout": "60s", "maxProbes": 8, "allowSkip": false},
  "logFile": "/var/log/netready.log"
}`

func mustParse(t testing.TB, conf string) *Conf {
	t.Helper()
	c, err := Parse([]byte(conf))
	if err != nil {
		t.Fatalf("Parse(%s): %v", conf, err)
	}
	return c
}

func mustProbe(t testing.TB, s string) Probe {
	t.Helper()
	p, err := ParseProbe(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// from sets the origin Parse or Resolve records for a probe.
func from(p Probe, origin string) Probe {
	p.Origin = origin
	return p
}

func TestParseDefaults(t *testing.T) {
	c := mustParse(t, `{"type": "netready"}`)
	want := Spec{
		Timeout:        60 * time.Second, // e2e/k3s measured why: see DefaultTimeout
		OnTimeout:      Fail,
		Gateway:        true,
		DefaultRoute:   true,
		Interval:       10 * time.Millisecond,
		MaxInterval:    40 * time.Millisecond,
		AttemptTimeout: time.Second,
	}
	if !reflect.DeepEqual(c.Base, want) {
		t.Errorf("Base = %+v, want %+v", c.Base, want)
	}
	if wantA := (AnnotationPolicy{Allow: true, MaxTimeout: 120 * time.Second, MaxProbes: 8}); c.Annotations != wantA {
		t.Errorf("Annotations = %+v, want %+v", c.Annotations, wantA)
	}
	if c.LogFile != "" || c.Rules != nil || c.Skip.Namespaces != nil || c.Skip.Pods != nil || c.PodWatch != nil {
		t.Errorf("want no logFile, rules, skip or podWatch, got %+v", c)
	}
}

func TestParsePodWatch(t *testing.T) {
	const k3s = `"server": "https://127.0.0.1:6443", "caFile": "/var/lib/rancher/k3s/agent/server-ca.crt",
	  "certFile": "/var/lib/rancher/k3s/agent/client-kubelet.crt", "keyFile": "/var/lib/rancher/k3s/agent/client-kubelet.key"`
	want := PodWatch{Server: "https://127.0.0.1:6443", CAFile: "/var/lib/rancher/k3s/agent/server-ca.crt",
		CertFile: "/var/lib/rancher/k3s/agent/client-kubelet.crt", KeyFile: "/var/lib/rancher/k3s/agent/client-kubelet.key", After: time.Second}
	c := mustParse(t, `{"podWatch": {`+k3s+`}}`)
	if c.PodWatch == nil || *c.PodWatch != want {
		t.Errorf("PodWatch = %+v, want %+v (after defaults to 1s)", c.PodWatch, want)
	}
	c = mustParse(t, `{"podWatch": {`+k3s+`, "after": "250ms"}}`)
	want.After = 250 * time.Millisecond
	if c.PodWatch == nil || *c.PodWatch != want {
		t.Errorf("PodWatch = %+v, want %+v", c.PodWatch, want)
	}
	c = mustParse(t, `{"podWatch": null}`)
	if c.PodWatch != nil {
		t.Errorf("podWatch null: PodWatch = %+v, want nil", c.PodWatch)
	}
}

func TestParseDesignExample(t *testing.T) {
	c := mustParse(t, designExample)
	if c.Type != "netready" || !c.Capabilities["io.kubernetes.cri.pod-annotations"] {
		t.Errorf("NetConf = %+v", c.NetConf)
	}
	want := Spec{
		Timeout:        30 * time.Second,
		OnTimeout:      Fail,
		Gateway:        true,
		DefaultRoute:   true,
		Probes:         []Probe{from(mustProbe(t, "tcp://10.15.21.167:9000"), "config"), from(mustProbe(t, "icmp://10.15.21.1"), "config")},
		Interval:       10 * time.Millisecond,
		MaxInterval:    40 * time.Millisecond,
		AttemptTimeout: time.Second,
	}
	if !reflect.DeepEqual(c.Base, want) {
		t.Errorf("Base = %+v, want %+v", c.Base, want)
	}
	if !reflect.DeepEqual(c.Skip, Match{Namespaces: []string{"kube-system"}}) {
		t.Errorf("Skip = %+v", c.Skip)
	}
	wantRules := []Rule{{
		Match:   Match{Namespaces: []string{"analytics"}},
		Probes:  []Probe{from(mustProbe(t, "tcp://10.15.21.167:8123"), "rules[0]")},
		Timeout: 60 * time.Second,
	}}
	if !reflect.DeepEqual(c.Rules, wantRules) {
		t.Errorf("Rules = %+v, want %+v", c.Rules, wantRules)
	}
	if c.LogFile != "/var/log/netready.log" {
		t.Errorf("LogFile = %q", c.LogFile)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name, conf string
		check      func(t *testing.T, c *Conf)
	}{
		{"gateway and defaultRoute false", `{"gateway": false, "defaultRoute": false}`, func(t *testing.T, c *Conf) {
			if c.Base.Gateway || c.Base.DefaultRoute {
				t.Errorf("Base = %+v, want gateway and defaultRoute false", c.Base)
			}
		}},
		{"null is absent", `{"gateway": null, "timeout": null, "probes": null, "skip": null, "rules": null, "annotations": null}`, func(t *testing.T, c *Conf) {
			if !reflect.DeepEqual(c.Base, defaultSpec) {
				t.Errorf("Base = %+v, want the defaults", c.Base)
			}
		}},
		{"onTimeout allow", `{"onTimeout": "allow"}`, func(t *testing.T, c *Conf) {
			if c.Base.OnTimeout != Allow {
				t.Errorf("OnTimeout = %q", c.Base.OnTimeout)
			}
		}},
		{"timeout at the maximum", `{"timeout": "200s"}`, func(t *testing.T, c *Conf) {
			if c.Base.Timeout != MaxTimeout {
				t.Errorf("Timeout = %s", c.Base.Timeout)
			}
		}},
		{"attemptTimeout equal to timeout", `{"timeout": "2s", "attemptTimeout": "2s"}`, nil},
		{"short timeout shortens the default attemptTimeout", `{"timeout": "500ms"}`, func(t *testing.T, c *Conf) {
			s, err := c.Resolve(Pod{})
			if err != nil || s.AttemptTimeout != 500*time.Millisecond {
				t.Errorf("Resolve: AttemptTimeout = %s (%v), want the timeout, 500ms", s.AttemptTimeout, err)
			}
		}},
		{"interval equal to maxInterval", `{"interval": "20ms", "maxInterval": "20ms"}`, nil},
		{"empty probes", `{"probes": []}`, func(t *testing.T, c *Conf) {
			if len(c.Base.Probes) != 0 {
				t.Errorf("Probes = %v", c.Base.Probes)
			}
		}},
		{"cni fields", `{"cniVersion": "1.0.0", "name": "cbr0", "type": "netready",
			"prevResult": {"cniVersion": "1.0.0", "ips": []}, "ipam": {"type": "host-local"}, "dns": {"nameservers": ["10.43.0.10"]},
			"runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"netready.dev/timeout": "5s"}, "portMappings": []},
			"args": {"cni": {"x": 1}}, "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
			"k8s.v1.cni.cncf.io/networks": "x", "some.vendor.key": 1}`, func(t *testing.T, c *Conf) {
			if c.CNIVersion != "1.0.0" || c.Name != "cbr0" || c.IPAM.Type != "host-local" || c.DNS.Nameservers[0] != "10.43.0.10" {
				t.Errorf("NetConf = %+v", c.NetConf)
			}
			if c.RawPrevResult["cniVersion"] != "1.0.0" {
				t.Errorf("RawPrevResult = %v", c.RawPrevResult)
			}
			if c.RuntimeConfig.PodAnnotations["netready.dev/timeout"] != "5s" {
				t.Errorf("RuntimeConfig = %+v", c.RuntimeConfig)
			}
			if string(c.Args) != `{"cni": {"x": 1}}` {
				t.Errorf("Args = %s", c.Args)
			}
			if len(c.ValidAttachments) != 1 || c.ValidAttachments[0].IfName != "eth0" {
				t.Errorf("ValidAttachments = %+v", c.ValidAttachments)
			}
		}},
		{"skip pods", `{"skip": {"pods": ["kube-system/coredns-*", "default/web", "ns/*"]}}`, func(t *testing.T, c *Conf) {
			if len(c.Skip.Pods) != 3 {
				t.Errorf("Skip = %+v", c.Skip)
			}
		}},
		{"rule overrides", `{"rules": [{"pods": ["db/*"], "probes": [], "onTimeout": "allow", "gateway": false, "defaultRoute": true}]}`, func(t *testing.T, c *Conf) {
			r := c.Rules[0]
			if r.Probes == nil || len(r.Probes) != 0 || r.OnTimeout != Allow || r.Gateway == nil || *r.Gateway || r.DefaultRoute == nil || !*r.DefaultRoute || r.Timeout != 0 {
				t.Errorf("Rule = %+v", r)
			}
		}},
		{"rule without probes keeps them", `{"rules": [{"namespaces": ["a"], "timeout": "5s"}]}`, func(t *testing.T, c *Conf) {
			if c.Rules[0].Probes != nil {
				t.Errorf("Rule.Probes = %#v, want nil", c.Rules[0].Probes)
			}
		}},
		{"annotations policy", `{"annotations": {"allow": false, "maxTimeout": "90s", "maxProbes": 0, "allowSkip": true}}`, func(t *testing.T, c *Conf) {
			if want := (AnnotationPolicy{MaxTimeout: 90 * time.Second, AllowSkip: true}); c.Annotations != want {
				t.Errorf("Annotations = %+v, want %+v", c.Annotations, want)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, tt.conf)
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, conf string
		code       uint
		want       []string // substrings of the message
	}{
		{"empty", ``, types.ErrDecodingFailure, []string{"not JSON"}},
		{"not JSON", `{"timeout": }`, types.ErrDecodingFailure, []string{"not JSON", "at byte"}},
		{"trailing garbage", `{} x`, types.ErrDecodingFailure, []string{"not JSON"}},
		{"list", `[]`, types.ErrDecodingFailure, []string{"want a JSON object, got a list"}},
		{"string", `"x"`, types.ErrDecodingFailure, []string{"want a JSON object"}},
		{"null", `null`, types.ErrDecodingFailure, []string{"want a JSON object, got null"}},

		{"typo probe", `{"probe": ["icmp://10.0.0.1"]}`, 7, []string{`"probe": unknown field; did you mean "probes"?`}},
		{"wrong case", `{"Probes": []}`, 7, []string{`"Probes": unknown field; did you mean "probes"?`}},
		{"snake case", `{"attempt_timeout": "1s"}`, 7, []string{`did you mean "attemptTimeout"?`}},
		{"typo cni field", `{"ipma": {}}`, 7, []string{`did you mean "ipam"?`}},
		{"unknown field", `{"retries": 3}`, 7, []string{`"retries": unknown field; netready knows timeout, onTimeout`}},

		{"timeout unparsable", `{"timeout": "30"}`, 7, []string{`"timeout": want a positive Go duration`, `got "30"`}},
		{"timeout number", `{"timeout": 30}`, 7, []string{`"timeout": want a positive Go duration`, "got the number 30"}},
		{"timeout zero", `{"timeout": "0s"}`, 7, []string{`"timeout": want a positive`}},
		{"timeout negative", `{"timeout": "-1s"}`, 7, []string{`"timeout": want a positive`}},
		{"timeout above max", `{"timeout": "201s"}`, 7, []string{`"timeout": 3m21s is more than the maximum 3m20s`}},
		{"onTimeout", `{"onTimeout": "retry"}`, 7, []string{`"onTimeout": want "fail"`, `"allow"`, `got "retry"`}},
		{"onTimeout case", `{"onTimeout": "Fail"}`, 7, []string{`"onTimeout"`}},
		{"onTimeout bool", `{"onTimeout": true}`, 7, []string{`"onTimeout": want "fail" or "allow", got the boolean true`}},
		{"gateway string", `{"gateway": "yes"}`, 7, []string{`"gateway": want true or false, got the string "yes"`}},
		{"defaultRoute number", `{"defaultRoute": 1}`, 7, []string{`"defaultRoute": want true or false, got the number 1`}},
		{"probes string", `{"probes": "tcp://10.0.0.1:80"}`, 7, []string{`"probes": want a list of probe URLs, got the string "tcp://10.0.0.1:80"`}},
		{"probes number element", `{"probes": ["icmp://10.0.0.1", 5]}`, 7, []string{`"probes[1]": want a string, got the number 5`}},
		{"probes hostname", `{"probes": ["icmp://10.0.0.1", "tcp://db.local:5432"]}`, 7, []string{`"probes[1]": probe "tcp://db.local:5432": host "db.local" is not an IP address`}},
		{"probes duplicate", `{"probes": ["tcp://10.0.0.1:80", "icmp://10.0.0.2", "TCP://10.0.0.1:0080/"]}`, 7, []string{`"probes[2]": tcp://10.0.0.1:80 is probes[0] again`}},
		{"interval zero", `{"interval": "0"}`, 7, []string{`"interval": want a positive`}},
		{"interval tiny", `{"interval": "100us"}`, 7, []string{`"interval": 100µs is less than 1ms`}},
		{"interval above maxInterval", `{"interval": "50ms"}`, 7, []string{`"interval": 50ms is more than "maxInterval" 40ms`}},
		{"maxInterval bad", `{"maxInterval": "fast"}`, 7, []string{`"maxInterval": want a positive`}},
		{"logFile relative", `{"logFile": "netready.log"}`, 7, []string{`"logFile": want an absolute path`}},
		{"logFile number", `{"logFile": 1}`, 7, []string{`"logFile": want a string`}},

		{"podWatch string", `{"podWatch": "on"}`, 7, []string{`"podWatch": want an object, got the string "on"`}},
		{"podWatch empty", `{"podWatch": {}}`, 7, []string{`"podWatch.server": missing: want the API server's https URL`, `"podWatch.caFile": missing`, `"podWatch.certFile": missing`, `"podWatch.keyFile": missing`}},
		{"podWatch typo", `{"podWatch": {"sever": "https://127.0.0.1:6443"}}`, 7, []string{`"podWatch.sever": unknown field; did you mean "server"?`}},
		{"podWatch http", `{"podWatch": {"server": "http://127.0.0.1:6443", "caFile": "/a", "certFile": "/b", "keyFile": "/c"}}`, 7, []string{`"podWatch.server": want an https URL (netready sends the node's client certificate, never in clear), got "http://127.0.0.1:6443"`}},
		{"podWatch no host", `{"podWatch": {"server": "https://:6443", "caFile": "/a", "certFile": "/b", "keyFile": "/c"}}`, 7, []string{`"podWatch.server": want a host`}},
		{"podWatch userinfo", `{"podWatch": {"server": "https://u:secret@127.0.0.1:6443", "caFile": "/a", "certFile": "/b", "keyFile": "/c"}}`, 7, []string{`"podWatch.server": want no userinfo`}},
		{"podWatch relative file", `{"podWatch": {"server": "https://127.0.0.1:6443", "caFile": "server-ca.crt", "certFile": "/b", "keyFile": "/c"}}`, 7, []string{`"podWatch.caFile": want an absolute path, got "server-ca.crt"`}},
		{"podWatch after", `{"podWatch": {"server": "https://127.0.0.1:6443", "caFile": "/a", "certFile": "/b", "keyFile": "/c", "after": "0s"}}`, 7, []string{`"podWatch.after": want a positive Go duration`}},

		{"skip string", `{"skip": "kube-system"}`, 7, []string{`"skip": want an object, got the string "kube-system"`}},
		{"skip typo", `{"skip": {"namespace": ["kube-system"]}}`, 7, []string{`"skip.namespace": unknown field; did you mean "namespaces"?`}},
		{"skip namespaces string", `{"skip": {"namespaces": "kube-system"}}`, 7, []string{`"skip.namespaces": want a list of namespace names`}},
		{"skip bad namespace", `{"skip": {"namespaces": ["kube-system", "Kube_System"]}}`, 7, []string{`"skip.namespaces[1]": want a namespace name`}},
		{"skip pod without namespace", `{"skip": {"pods": ["coredns"]}}`, 7, []string{`"skip.pods[0]": want "namespace/name"`}},
		{"skip pod wildcard namespace", `{"skip": {"pods": ["*/coredns"]}}`, 7, []string{`"skip.pods[0]"`}},
		{"skip pod upper case", `{"skip": {"pods": ["a/B"]}}`, 7, []string{`"skip.pods[0]"`}},
		{"skip pod empty name", `{"skip": {"pods": ["a/"]}}`, 7, []string{`"skip.pods[0]"`}},

		{"rules object", `{"rules": {"namespaces": ["a"]}}`, 7, []string{`"rules": want a list of objects, got an object`}},
		{"rules null element", `{"rules": [null]}`, 7, []string{`"rules[0]": want an object, got null`}},
		{"rule matching nothing", `{"rules": [{"namespaces": ["a"]}, {"timeout": "5s"}]}`, 7, []string{`"rules[1]": a rule needs "namespaces" or "pods"`}},
		{"rule typo", `{"rules": [{"namespaces": ["a"], "probe": []}]}`, 7, []string{`"rules[0].probe": unknown field; did you mean "probes"?`}},
		{"rule interval", `{"rules": [{"namespaces": ["a"], "interval": "5ms"}]}`, 7, []string{`"rules[0].interval": unknown field`}},
		{"rule bad probe", `{"rules": [{"namespaces": ["a"]}, {"pods": ["a/b"], "probes": ["icmp://10.0.0.1", "icmp://x"]}]}`, 7, []string{`"rules[1].probes[1]": probe "icmp://x"`}},
		{"rule timeout above max", `{"rules": [{"namespaces": ["a"], "timeout": "4m"}]}`, 7, []string{`"rules[0].timeout": 4m0s is more than the maximum`}},
		{"rule onTimeout", `{"rules": [{"namespaces": ["a"], "onTimeout": "never"}]}`, 7, []string{`"rules[0].onTimeout": want "fail"`}},
		{"rule gateway", `{"rules": [{"namespaces": ["a"], "gateway": "no"}]}`, 7, []string{`"rules[0].gateway": want true or false`}},
		{"rule bad namespace", `{"rules": [{"namespaces": ["A"]}]}`, 7, []string{`"rules[0].namespaces[0]": want a namespace name`}},

		{"annotations list", `{"annotations": []}`, 7, []string{`"annotations": want an object, got a list`}},
		{"annotations typo", `{"annotations": {"allowskip": true}}`, 7, []string{`"annotations.allowskip": unknown field; did you mean "allowSkip"?`}},
		{"annotations allow", `{"annotations": {"allow": "yes"}}`, 7, []string{`"annotations.allow": want true or false`}},
		{"annotations maxTimeout", `{"annotations": {"maxTimeout": "4m"}}`, 7, []string{`"annotations.maxTimeout": 4m0s is more than the maximum`}},
		{"annotations maxProbes negative", `{"annotations": {"maxProbes": -1}}`, 7, []string{`"annotations.maxProbes": want 0 or more, got -1`}},
		{"annotations maxProbes fraction", `{"annotations": {"maxProbes": 1.5}}`, 7, []string{`"annotations.maxProbes": want a whole number, got the number 1.5`}},
		{"annotations maxProbes string", `{"annotations": {"maxProbes": "8"}}`, 7, []string{`"annotations.maxProbes": want a whole number, got the string "8"`}},

		{"name number", `{"name": 5}`, 7, []string{`"name": want a string`}},
		{"capabilities", `{"capabilities": ["x"]}`, 7, []string{`"capabilities": want an object of booleans, got a list`}},
		{"dns nameservers", `{"dns": {"nameservers": "10.0.0.1"}}`, 7, []string{`"dns": want an object`, "nameservers"}},
		{"runtimeConfig annotations", `{"runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"a": 1}}}`, 7, []string{`"runtimeConfig": want an object`}},
		{"prevResult", `{"prevResult": []}`, 7, []string{`"prevResult": want an object, got a list`}},
		{"args", `{"args": "x"}`, 7, []string{`"args": want an object`}},

		{"every error at once", `{"probe": [], "timeout": "x", "gateway": "no", "rules": [{"pods": ["x"]}]}`, 7,
			[]string{`"probe": unknown`, `"timeout": want`, `"gateway": want`, `"rules[0].pods[0]": want`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.conf))
			if err == nil {
				t.Fatalf("Parse(%s) = %+v, want an error", tt.conf, c)
			}
			if c != nil {
				t.Errorf("Parse returned a Conf with its error")
			}
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("error %v is %T, want *types.Error", err, err)
			}
			if te.Code != tt.code {
				t.Errorf("code = %d, want %d (%v)", te.Code, tt.code, te)
			}
			if !strings.HasPrefix(te.Msg, "netready config: ") {
				t.Errorf("message %q does not start with netready config:", te.Msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(te.Msg, w) {
					t.Errorf("message\n %s\nwant it to contain\n %s", te.Msg, w)
				}
			}
		})
	}
}

func TestParseUserinfoNeverShown(t *testing.T) {
	for name, conf := range map[string]string{
		"type error":       `{"probes": "http://alice:s3cret@10.0.0.1/"}`,
		"bad probe":        `{"probes": ["http://alice:s3cret@db.local/"]}`,
		"duplicate":        `{"probes": ["tcp://alice:s3cret@10.0.0.1:80", "tcp://10.0.0.1:80"]}`,
		"rule probe":       `{"rules": [{"namespaces": ["a"], "probes": ["http://alice:s3cret@10.0.0.1/?status=1"]}]}`,
		"wrong field type": `{"timeout": "http://alice:s3cret@10.0.0.1/"}`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(conf))
			if err == nil {
				t.Fatal("want an error")
			}
			if strings.Contains(err.Error(), "alice") || strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error shows the userinfo: %v", err)
			}
		})
	}
}
