package config

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

const policyConf = `{
  "type": "netready",
  "probes": ["tcp://10.0.0.1:80"],
  "skip": {"namespaces": ["kube-system"], "pods": ["default/debug-*", "web/*-canary"]},
  "rules": [
    {"namespaces": ["analytics"], "probes": ["tcp://10.0.0.2:8123"], "timeout": "60s"},
    {"pods": ["db/postgres-*"], "onTimeout": "allow", "gateway": false, "defaultRoute": false},
    {"namespaces": ["analytics", "db"], "probes": []}
  ],
  "annotations": {"allowSkip": true, "maxProbes": 3, "maxTimeout": "60s"}
}`

func TestResolve(t *testing.T) {
	c := mustParse(t, policyConf)
	tcp1 := from(mustProbe(t, "tcp://10.0.0.1:80"), "config")
	tcp2 := from(mustProbe(t, "tcp://10.0.0.2:8123"), "rules[0]")
	icmp9 := from(mustProbe(t, "icmp://10.0.0.9"), "annotation")
	ann := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name string
		pod  Pod
		want func(s *Spec) // applied to the base spec
	}{
		{"no rule matches", Pod{Namespace: "default", Name: "web"}, func(s *Spec) {}},
		{"outside kubernetes", Pod{}, func(s *Spec) {}},
		{"skip namespace", Pod{Namespace: "kube-system", Name: "coredns-abc"}, func(s *Spec) {
			s.Skipped, s.SkipReason = true, `skip.namespaces "kube-system"`
		}},
		{"skip pod prefix", Pod{Namespace: "default", Name: "debug-1"}, func(s *Spec) {
			s.Skipped, s.SkipReason = true, `skip.pods "default/debug-*"`
		}},
		{"skip pod suffix", Pod{Namespace: "web", Name: "shop-canary"}, func(s *Spec) {
			s.Skipped, s.SkipReason = true, `skip.pods "web/*-canary"`
		}},
		{"skip pod other namespace", Pod{Namespace: "web2", Name: "shop-canary"}, func(s *Spec) {}},
		{"skip wins over annotations", Pod{Namespace: "kube-system", Name: "x", Annotations: ann(AnnotationTimeout, "junk")}, func(s *Spec) {
			s.Skipped, s.SkipReason = true, `skip.namespaces "kube-system"`
		}},
		{"first rule", Pod{Namespace: "analytics", Name: "x"}, func(s *Spec) {
			s.Probes, s.Timeout, s.Rule = []Probe{tcp2}, 60*time.Second, "rules[0]"
		}},
		{"second rule keeps probes", Pod{Namespace: "db", Name: "postgres-0"}, func(s *Spec) {
			s.OnTimeout, s.Gateway, s.DefaultRoute, s.Rule = Allow, false, false, "rules[1]"
		}},
		{"third rule empties probes", Pod{Namespace: "db", Name: "redis-0"}, func(s *Spec) {
			s.Probes, s.Rule = []Probe{}, "rules[2]"
		}},
		{"annotation probes added", Pod{Namespace: "default", Name: "web", Annotations: ann(AnnotationProbes, " icmp://10.0.0.9 ,, tcp://10.0.0.1:80,")}, func(s *Spec) {
			s.Probes = []Probe{tcp1, icmp9}
		}},
		{"annotation probes after rule", Pod{Namespace: "analytics", Name: "x", Annotations: ann(AnnotationProbes, "icmp://10.0.0.9")}, func(s *Spec) {
			s.Probes, s.Timeout, s.Rule = []Probe{tcp2, icmp9}, 60*time.Second, "rules[0]"
		}},
		{"annotation probes up to the cap", Pod{Namespace: "default", Name: "web", Annotations: ann(AnnotationProbes, "icmp://10.0.0.9,icmp://10.0.0.10")}, func(s *Spec) {
			s.Probes = []Probe{tcp1, icmp9, from(mustProbe(t, "icmp://10.0.0.10"), "annotation")}
		}},
		{"annotation timeout", Pod{Namespace: "analytics", Name: "x", Annotations: ann(AnnotationTimeout, "45s")}, func(s *Spec) {
			s.Probes, s.Timeout, s.Rule = []Probe{tcp2}, 45*time.Second, "rules[0]"
		}},
		{"annotation timeout at cap", Pod{Namespace: "default", Name: "web", Annotations: ann(AnnotationTimeout, "1m")}, func(s *Spec) {
			s.Timeout = time.Minute
		}},
		{"annotation skip", Pod{Namespace: "default", Name: "web", Annotations: ann(AnnotationSkip, "true")}, func(s *Spec) {
			s.Skipped, s.SkipReason = true, "annotation netready.dev/skip"
		}},
		{"annotation skip false", Pod{Namespace: "default", Name: "web", Annotations: ann(AnnotationSkip, "false")}, func(s *Spec) {}},
		{"other annotations ignored", Pod{Namespace: "default", Name: "web", Annotations: ann("example.com/probes", "junk", "netready.dev", "x")}, func(s *Spec) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.Resolve(tt.pod)
			if err != nil {
				t.Fatalf("Resolve(%+v): %v", tt.pod, err)
			}
			want := c.Base
			want.Probes = slices.Clone(want.Probes)
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Resolve(%+v)\n got %+v\nwant %+v", tt.pod, got, want)
			}
		})
	}
}

func TestResolveErrors(t *testing.T) {
	tests := []struct {
		name, conf  string
		annotations map[string]string
		want        []string
	}{
		{"too many probes", policyConf, map[string]string{AnnotationProbes: "icmp://10.0.0.7,icmp://10.0.0.8,icmp://10.0.0.9"},
			[]string{`pod annotation "netready.dev/probes": adds 3 probes, 4 in all, more than annotations.maxProbes 3`}},
		{"maxProbes zero", `{"annotations": {"maxProbes": 0}}`, map[string]string{AnnotationProbes: "icmp://10.0.0.7"},
			[]string{"more than annotations.maxProbes 0"}},
		{"bad probe", policyConf, map[string]string{AnnotationProbes: "icmp://10.0.0.7, tcp://db.local:5432"},
			[]string{`pod annotation "netready.dev/probes": probe "tcp://db.local:5432": host "db.local" is not an IP address`}},
		{"timeout above cap", policyConf, map[string]string{AnnotationTimeout: "90s"},
			[]string{`pod annotation "netready.dev/timeout": "90s" is more than annotations.maxTimeout 1m0s`}},
		{"timeout junk", policyConf, map[string]string{AnnotationTimeout: "soon"},
			[]string{`pod annotation "netready.dev/timeout": "soon": want a positive Go duration`}},
		{"timeout negative", policyConf, map[string]string{AnnotationTimeout: "-5s"},
			[]string{`pod annotation "netready.dev/timeout": "-5s"`}},
		{"skip not allowed", `{}`, map[string]string{AnnotationSkip: "true"},
			[]string{`pod annotation "netready.dev/skip": "true" is not allowed: annotations.allowSkip is false`}},
		{"skip junk", policyConf, map[string]string{AnnotationSkip: "yes"},
			[]string{`pod annotation "netready.dev/skip": "yes": want "true" or "false"`}},
		{"unknown annotation", policyConf, map[string]string{"netready.dev/probe": "icmp://10.0.0.7"},
			[]string{`pod annotation "netready.dev/probe": unknown netready annotation; did you mean "netready.dev/probes"?`}},
		{"every error at once", policyConf, map[string]string{AnnotationTimeout: "2m", AnnotationSkip: "1", "netready.dev/zzzz": ""},
			[]string{`"netready.dev/timeout"`, `"netready.dev/skip"`, `"netready.dev/zzzz": unknown netready annotation; netready reads netready.dev/probes`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, tt.conf)
			s, err := c.Resolve(Pod{Namespace: "default", Name: "web", Annotations: tt.annotations})
			if err == nil {
				t.Fatalf("Resolve = %+v, want an error", s)
			}
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("error %v (%T), want a *types.Error with code 7", err, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(te.Msg, w) {
					t.Errorf("message\n %s\nwant it to contain\n %s", te.Msg, w)
				}
			}
		})
	}
}

func TestResolveAnnotationsNotAllowed(t *testing.T) {
	c := mustParse(t, `{"annotations": {"allow": false}}`)
	s, err := c.Resolve(Pod{Namespace: "default", Name: "web", Annotations: map[string]string{
		AnnotationProbes: "icmp://x", AnnotationTimeout: "100s", AnnotationSkip: "true", "netready.dev/typo": "",
	}})
	want := c.Base
	want.AnnotationsIgnored = true
	if err != nil || !reflect.DeepEqual(s, want) {
		t.Errorf("Resolve = %+v, %v; want the base spec, annotations noted as ignored, and no error", s, err)
	}
}

func TestResolveUserinfoNeverShown(t *testing.T) {
	c := mustParse(t, `{}`)
	_, err := c.Resolve(Pod{Annotations: map[string]string{AnnotationProbes: "http://alice:s3cret@db.local/"}})
	if err == nil || strings.Contains(err.Error(), "alice") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("Resolve error = %v; want one without the userinfo", err)
	}
}

// Redact takes out of a message for the log the values of netready's annotations the way
// Resolve's messages quote them, and nothing else: not the same characters unquoted, not other
// annotations' values.
func TestPodRedact(t *testing.T) {
	c := mustParse(t, policyConf)
	long := strings.Repeat("s3cret-", 30) // clipped in the message
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		gone        []string // not in the redacted message
	}{
		{"timeout junk", map[string]string{AnnotationTimeout: "s3cret"}, []string{"s3cret"}},
		{"timeout above cap", map[string]string{AnnotationTimeout: "999s"}, []string{"999s"}},
		{"skip junk, long", map[string]string{AnnotationSkip: long}, []string{"s3cret-"}},
		{"every error at once", map[string]string{AnnotationTimeout: "s3cret", AnnotationSkip: "pa55"}, []string{"s3cret", "pa55"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := Pod{Namespace: "default", Name: "web", Annotations: tc.annotations}
			_, err := c.Resolve(pod)
			if err == nil {
				t.Fatal("Resolve: no error")
			}
			msg := pod.Redact(err.Error())
			for _, g := range tc.gone {
				if strings.Contains(msg, g) {
					t.Errorf("Redact left %q in\n %s", g, msg)
				}
			}
			if !strings.Contains(msg, `"<redacted>"`) || !strings.Contains(msg, `pod annotation "netready.dev/`) {
				t.Errorf("Redact = %s; want the annotation named and its value <redacted>", msg)
			}
		})
	}

	// What a waiting ADD's message says is not a value, though it may hold the same characters.
	pod := Pod{Annotations: map[string]string{
		AnnotationTimeout: "3s", AnnotationSkip: "false", "example.com/enabled": "true", "example.com/port": "1",
		AnnotationProbes: "tcp://10.0.0.7:5432",
	}}
	msg := `pod network not ready after 3.003s: tcp://10.0.0.7:5432: no answer (13 attempts); "true" on K3s 1.35; skip "false"`
	want := `pod network not ready after 3.003s: tcp://10.0.0.7:5432: no answer (13 attempts); "true" on K3s 1.35; skip "<redacted>"`
	if got := pod.Redact(msg); got != want {
		t.Errorf("Redact\n got %s\nwant %s", got, want)
	}
}

// The gate may keep or change the spec it gets; the Conf serves the next pod.
func TestResolveDoesNotShareProbes(t *testing.T) {
	c := mustParse(t, policyConf)
	base, rule := slices.Clone(c.Base.Probes), slices.Clone(c.Rules[0].Probes)
	for _, pod := range []Pod{
		{Namespace: "default", Name: "web", Annotations: map[string]string{AnnotationProbes: "icmp://10.0.0.9"}},
		{Namespace: "default", Name: "web"},
		{Namespace: "analytics", Name: "x"},
		{Namespace: "kube-system", Name: "x"},
	} {
		s, err := c.Resolve(pod)
		if err != nil {
			t.Fatal(err)
		}
		for i := range s.Probes {
			s.Probes[i] = Probe{}
		}
		_ = append(s.Probes, Probe{})
	}
	if !slices.Equal(c.Base.Probes, base) || !slices.Equal(c.Rules[0].Probes, rule) {
		t.Errorf("Resolve let its caller change the Conf: %+v %+v", c.Base.Probes, c.Rules[0].Probes)
	}
}

func TestPod(t *testing.T) {
	c := mustParse(t, `{"runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"a": "b"}}}`)
	tests := []struct {
		name, args string
		want       Pod
		wantErr    string
	}{
		{"containerd", "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-7c6b;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u",
			Pod{Namespace: "kube-system", Name: "coredns-7c6b", UID: "u"}, ""},
		{"any order, trailing separator", "K8S_POD_NAME=web;FOO=bar=baz;K8S_POD_NAMESPACE=default;", Pod{Namespace: "default", Name: "web"}, ""},
		{"none", "", Pod{}, ""},
		{"only other keys", "IgnoreUnknown=1", Pod{}, ""},
		{"pair without =", "K8S_POD_NAMESPACE=default;junk", Pod{}, `CNI_ARGS: "junk" is not KEY=VALUE`},
		{"empty key", "=x", Pod{}, `CNI_ARGS: "=x" is not KEY=VALUE`},
		{"namespace twice", "K8S_POD_NAMESPACE=a;K8S_POD_NAMESPACE=b", Pod{}, "CNI_ARGS: K8S_POD_NAMESPACE given twice"},
		{"uid twice", "K8S_POD_UID=a;K8S_POD_UID=b", Pod{}, "CNI_ARGS: K8S_POD_UID given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.Pod(tt.args)
			if tt.wantErr != "" {
				var te *types.Error
				if !errors.As(err, &te) || te.Code != types.ErrInvalidEnvironmentVariables || !strings.Contains(te.Msg, tt.wantErr) {
					t.Fatalf("Pod(%q) error = %v, want code 4 containing %q", tt.args, err, tt.wantErr)
				}
				return
			}
			tt.want.Annotations = map[string]string{"a": "b"}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Pod(%q) = %+v, %v; want %+v", tt.args, got, err, tt.want)
			}
		})
	}
}

func TestGlob(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"web", "web", true},
		{"web", "web-1", false},
		{"*", "", true},
		{"*", "anything", true},
		{"coredns-*", "coredns-7c6b", true},
		{"coredns-*", "coredns-", true},
		{"coredns-*", "coredn", false},
		{"*-canary", "shop-canary", true},
		{"*-canary", "shop-canary-2", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "acb", false},
		{"a*a", "a", false},
		{"a*a", "aa", true},
		{"**", "x", true},
		{"x*x*x", "xxx", true},
		{"x*x*x", "xx", false},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+" "+tt.s, func(t *testing.T) {
			if got := glob(tt.pattern, tt.s); got != tt.want {
				t.Errorf("glob(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
			}
		})
	}
}

func BenchmarkParse(b *testing.B) {
	data := []byte(designExample)
	for b.Loop() {
		if _, err := Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkResolve(b *testing.B) {
	c := mustParse(b, designExample)
	for _, bc := range []struct {
		name string
		pod  Pod
	}{
		{"base", Pod{Namespace: "default", Name: "web-7d9f"}},
		{"rule", Pod{Namespace: "analytics", Name: "clickhouse-0"}},
		{"annotations", Pod{Namespace: "analytics", Name: "clickhouse-0", Annotations: map[string]string{
			AnnotationProbes: "tcp://10.15.21.168:9000,icmp://10.15.21.2", AnnotationTimeout: "45s", "kubernetes.io/config.seen": "x",
		}}},
		{"skip", Pod{Namespace: "kube-system", Name: "coredns-7c6b"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := c.Resolve(bc.pod); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
