package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// What the runtime and the pod's owner hand netready, fuzzed: CNI_ARGS and pod annotations.
// The seed corpora are in testdata/fuzz/FuzzPod and testdata/fuzz/FuzzResolveAnnotations.

func FuzzPod(f *testing.F) {
	annotations := map[string]string{"netready.dev/timeout": "5s"}
	c := &Conf{RuntimeConfig: RuntimeConfig{PodAnnotations: annotations}}
	f.Fuzz(func(t *testing.T, cniArgs string) {
		pod, err := c.Pod(cniArgs)
		wantNS, wantName, wantErr := podArgs(cniArgs)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidEnvironmentVariables || !strings.HasPrefix(te.Msg, "CNI_ARGS: ") {
				t.Fatalf("Pod(%q) error %v (%T), want a *types.Error, code 4, naming CNI_ARGS", cniArgs, err, err)
			}
			// The offending pair is clipped (to 120 bytes, which %q may escape to 4 times as
			// many): the error reaches the pod's events.
			if len(te.Msg) > 700 {
				t.Fatalf("Pod(%q) error is %d bytes long: %q", cniArgs, len(te.Msg), te.Msg)
			}
			if wantErr == "" {
				t.Fatalf("Pod(%q) error %v, want namespace %q name %q", cniArgs, err, wantNS, wantName)
			}
			if !strings.Contains(te.Msg, wantErr) {
				t.Fatalf("Pod(%q) error %q, want it to say %q", cniArgs, te.Msg, wantErr)
			}
			return
		}
		if wantErr != "" {
			t.Fatalf("Pod(%q) = %+v, want an error saying %q", cniArgs, pod, wantErr)
		}
		if pod.Namespace != wantNS || pod.Name != wantName {
			t.Fatalf("Pod(%q) = %q/%q, want %q/%q", cniArgs, pod.Namespace, pod.Name, wantNS, wantName)
		}
		if !reflect.DeepEqual(pod.Annotations, annotations) {
			t.Fatalf("Pod(%q) annotations %v, want the runtime's %v", cniArgs, pod.Annotations, annotations)
		}
	})
}

// podArgs is a plain reading of CNI_ARGS as the CNI spec and containerd write it: ';'-separated
// KEY=VALUE pairs. It returns the pod's namespace and name, or what the error must mention.
func podArgs(s string) (ns, name, errSays string) {
	seen := map[string]bool{}
	for _, pair := range strings.Split(s, ";") {
		if pair == "" {
			continue
		}
		i := strings.IndexByte(pair, '=')
		if i <= 0 {
			return "", "", "is not KEY=VALUE"
		}
		k, v := pair[:i], pair[i+1:]
		if k != "K8S_POD_NAMESPACE" && k != "K8S_POD_NAME" {
			continue
		}
		if seen[k] {
			return "", "", k + " given twice"
		}
		seen[k] = true
		if k == "K8S_POD_NAMESPACE" {
			ns = v
		} else {
			name = v
		}
	}
	return ns, name, ""
}

// FuzzResolveAnnotations feeds pod annotations through Resolve under a policy that the fuzzer
// also varies. present says which annotations the pod has: 1 probes, 2 timeout, 4 skip, 8 the
// extra key, which is under netready.dev/ with 16 and under example.com/ without. maxTimeout is
// in seconds (0: the default 60s); maxProbes 255 is the default 8; base is the number of probes
// the admin configured (modulo 4).
func FuzzResolveAnnotations(f *testing.F) {
	baseProbes := []string{"tcp://10.0.0.1:5432", "icmp://10.0.0.2", "dns://10.43.0.10/kubernetes.default"}
	f.Fuzz(func(t *testing.T, probes, timeout, skip, extraKey, extraValue string, present, maxTimeout, maxProbes, base uint8, allowSkip, allow bool) {
		policy := map[string]any{"allow": allow, "allowSkip": allowSkip}
		if maxTimeout != 0 {
			policy["maxTimeout"] = fmt.Sprintf("%ds", min(int(maxTimeout), int(MaxTimeout/time.Second)))
		}
		if maxProbes != 255 {
			policy["maxProbes"] = int(maxProbes % 16)
		}
		conf := fmt.Sprintf(`{"type":"netready","timeout":"30s","probes":%s,"annotations":%s}`,
			jsonOf(t, baseProbes[:int(base%4)]), jsonOf(t, policy))
		c, err := Parse([]byte(conf))
		if err != nil {
			t.Fatalf("Parse(%s): %v", conf, err)
		}
		a := c.Annotations

		ann := map[string]string{}
		if present&1 != 0 {
			ann[AnnotationProbes] = probes
		}
		if present&2 != 0 {
			ann[AnnotationTimeout] = timeout
		}
		if present&4 != 0 {
			ann[AnnotationSkip] = skip
		}
		extra := ""
		if present&8 != 0 {
			extra = "example.com/" + extraKey
			if present&16 != 0 {
				extra = annotationPrefix + extraKey
			}
			ann[extra] = extraValue
		}
		pod := Pod{Namespace: "default", Name: "web", Annotations: ann}
		s, err := c.Resolve(pod)

		// An annotation outside netready.dev/ changes nothing: not the spec, not the error.
		if extra != "" && !strings.HasPrefix(extra, annotationPrefix) {
			without := maps.Clone(ann)
			delete(without, extra)
			s2, err2 := c.Resolve(Pod{Namespace: "default", Name: "web", Annotations: without})
			if !reflect.DeepEqual(s, s2) || fmt.Sprint(err) != fmt.Sprint(err2) {
				t.Fatalf("annotation %q=%q changed the outcome:\n%+v, %v\nwithout it: %+v, %v", extra, extraValue, s, err, s2, err2)
			}
		}

		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("Resolve error %v (%T), want a *types.Error, code 7", err, err)
			}
			if !a.Allow {
				t.Fatalf("annotations.allow is false, yet Resolve failed: %v", err)
			}
			named := annotationKeyRE.FindAllStringSubmatch(te.Msg, -1)
			if len(named) == 0 {
				t.Fatalf("Resolve error %q names no netready.dev/ annotation", te.Msg)
			}
			for _, m := range named {
				key, uerr := strconv.Unquote(m[1])
				if uerr != nil || !annotationNamed(ann, key) {
					t.Fatalf("Resolve error %q names %s, not one of the pod's netready.dev/ annotations %q", te.Msg, m[1], keysOf(ann))
				}
			}
			return
		}

		// The admin's settings that annotations never touch.
		b := c.Base
		if s.OnTimeout != b.OnTimeout || s.Gateway != b.Gateway || s.DefaultRoute != b.DefaultRoute ||
			s.Interval != b.Interval || s.MaxInterval != b.MaxInterval {
			t.Fatalf("annotations %q changed what they may not: %+v, base %+v", ann, s, b)
		}
		if s.Timeout <= 0 || s.Timeout > MaxTimeout || s.AttemptTimeout <= 0 || s.AttemptTimeout > s.Timeout {
			t.Fatalf("annotations %q: timeout %v, attemptTimeout %v out of bounds", ann, s.Timeout, s.AttemptTimeout)
		}
		if s.Timeout != b.Timeout && (!a.Allow || s.Timeout > a.MaxTimeout) {
			t.Fatalf("annotations %q set timeout %v past annotations.maxTimeout %v (allow %v)", ann, s.Timeout, a.MaxTimeout, a.Allow)
		}
		if _, set := ann[AnnotationTimeout]; !set && s.Timeout != b.Timeout {
			t.Fatalf("timeout %v without a timeout annotation, want %v", s.Timeout, b.Timeout)
		}
		if s.Skipped && (!a.Allow || !a.AllowSkip || ann[AnnotationSkip] != "true") {
			t.Fatalf("annotations %q skipped the pod (allow %v, allowSkip %v)", ann, a.Allow, a.AllowSkip)
		}
		if s.Skipped != (s.SkipReason != "") {
			t.Fatalf("Skipped %v and SkipReason %q disagree", s.Skipped, s.SkipReason)
		}

		// Probes: the admin's first and unchanged, then those the annotation added, within the cap.
		if len(s.Probes) < len(b.Probes) || !slices.Equal(s.Probes[:len(b.Probes)], b.Probes) {
			t.Fatalf("annotations %q dropped or changed configured probes: %v, configured %v", ann, s.Probes, b.Probes)
		}
		if added := len(s.Probes) - len(b.Probes); added > 0 && (!a.Allow || len(s.Probes) > a.MaxProbes) {
			t.Fatalf("annotations %q added %d probes, %d in all, past annotations.maxProbes %d (allow %v)", ann, added, len(s.Probes), a.MaxProbes, a.Allow)
		}
		seen := map[string]bool{}
		for i, p := range s.Probes {
			again, err := ParseProbe(p.URL)
			if err != nil || from(again, p.Origin) != p || seen[p.URL] {
				t.Fatalf("probe %+v does not re-parse to itself or is a duplicate (%v)", p, err)
			}
			seen[p.URL] = true
			if i >= len(b.Probes) && p.Origin != "annotation" {
				t.Fatalf("added probe %s has origin %q, want annotation", p.URL, p.Origin)
			}
			if u, err := url.Parse(p.URL); err != nil || u.User != nil {
				t.Fatalf("probe URL %q holds userinfo (%v)", p.URL, err)
			}
		}
		hasOurs := false
		for k := range ann {
			hasOurs = hasOurs || strings.HasPrefix(k, annotationPrefix)
		}
		if s.AnnotationsIgnored != (!a.Allow && hasOurs) {
			t.Fatalf("AnnotationsIgnored %v with allow %v and annotations %q", s.AnnotationsIgnored, a.Allow, keysOf(ann))
		}
	})
}

// annotationKeyRE finds the annotations an error names: pod annotation "KEY".
var annotationKeyRE = regexp.MustCompile(`pod annotation ("(?:[^"\\]|\\.)*")`)

// annotationNamed reports whether key, as an error shows it, is one of the pod's netready.dev/
// annotations.
func annotationNamed(ann map[string]string, key string) bool {
	for k := range ann {
		if strings.HasPrefix(k, annotationPrefix) && clip(k) == key {
			return true
		}
	}
	return false
}

func keysOf(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
