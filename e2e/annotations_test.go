package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/internal/logrec"
)

// TestTier1Annotations is issue 3's integration test: per-pod policy with the pod's annotations
// arriving through libcni's CapabilityArgs exactly as containerd sends them
// (runtimeConfig["io.kubernetes.cri.pod-annotations"], only to a plugin that declares the
// capability), K8S_POD_NAMESPACE/NAME in CNI_ARGS, gating a pod in a real netns behind K3s's
// chain. The base config has no probes, so whatever gates a pod comes from a rule or an
// annotation. The path to the db is blocked by the router; where a case expects the gate to wait,
// it opens ~400 ms after ADD starts, and where it expects no gate it stays blocked (a gate would
// then time out after the 10 s timeout).
func TestTier1Annotations(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	b := tier1Bed(t, false)
	fault, err := b.BlockRouter(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// conf is netready's object: no probes of its own, kube-system skipped, a rule for
	// analytics, annotations allowed within caps; policy overrides "annotations".
	conf := func(name string, policy map[string]any) (string, map[string]any) {
		logFile := tier1LogFile(b, "annotations-"+name)
		if policy == nil {
			policy = map[string]any{"allow": true, "maxTimeout": "60s", "maxProbes": 8, "allowSkip": false}
		}
		return logFile, map[string]any{
			"timeout":     "10s",
			"probes":      []string{},
			"skip":        map[string]any{"namespaces": []string{"kube-system"}},
			"rules":       []any{map[string]any{"namespaces": []string{"analytics"}, "probes": []string{testbed.ProbeDB}}},
			"annotations": policy,
			"logFile":     logFile,
		}
	}

	const openAfter = 400 * time.Millisecond
	for _, tc := range []struct {
		name        string
		policy      map[string]any // nil: allow, allowSkip false
		namespace   string
		annotations map[string]string
		gated       bool // ADD must wait for the opening; else it must return while blocked
		outcome     logrec.Outcome
		origin      string // of testbed.ProbeDB in the log, when gated
		rule        string
		reason      string // part of the log's skip reason
		ignored     bool   // the log says annotations were ignored
		noCap       bool   // the conflist does not declare the annotations capability
	}{
		{
			name:        "annotation gates the pod",
			annotations: map[string]string{"netready.dev/probes": testbed.ProbeDB, "netready.dev/timeout": "15s"},
			gated:       true, outcome: logrec.Ready, origin: "annotation",
		},
		{
			name:        "no annotation, no probe",
			annotations: map[string]string{"app.kubernetes.io/name": "web"},
			outcome:     logrec.Ready,
		},
		{
			// libcni, like containerd, passes the annotations only to a plugin that declares the
			// capability: without it netready never sees them.
			name:        "capability not declared",
			annotations: map[string]string{"netready.dev/probes": testbed.ProbeDB},
			outcome:     logrec.Ready, noCap: true,
		},
		{
			name:        "allow false ignores annotations",
			policy:      map[string]any{"allow": false},
			annotations: map[string]string{"netready.dev/probes": testbed.ProbeDB, "netready.dev/timeout": "10m"},
			outcome:     logrec.Ready, ignored: true,
		},
		{
			name:        "skip annotation with allowSkip",
			policy:      map[string]any{"allow": true, "allowSkip": true},
			namespace:   "analytics", // whose rule would gate it
			annotations: map[string]string{"netready.dev/skip": "true"},
			outcome:     logrec.Skipped, reason: "netready.dev/skip",
		},
		{
			name:      "rule for the namespace replaces the probes",
			namespace: "analytics",
			gated:     true, outcome: logrec.Ready, origin: "rules[0]", rule: "rules[0]",
		},
		{
			name:        "kube-system skipped whatever its annotations",
			namespace:   "kube-system",
			annotations: map[string]string{"netready.dev/probes": testbed.ProbeDB},
			outcome:     logrec.Skipped, reason: "kube-system",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logFile, nr := conf(strings.ReplaceAll(tc.name, " ", "-"), tc.policy)
			if tc.noCap {
				nr["capabilities"] = map[string]bool{}
			}
			list := confList(t, b, testbed.K3sConflist("1.0.0", tier1Netready(t, nr)))
			if err := fault.Block(); err != nil {
				t.Fatal(err)
			}
			pod := newPod(t, b)
			if tc.namespace != "" {
				pod.Namespace = tc.namespace
			}
			pod.Annotations = tc.annotations

			start := time.Now()
			var opened <-chan testbed.Opened
			if tc.gated {
				opened = fault.OpenAt(start.Add(openAfter))
			}
			_, err := b.Add(ctx, list, pod)
			returned := time.Now()
			took := returned.Sub(start)
			if err != nil {
				t.Fatalf("ADD after %v: %v", took, err)
			}
			rec := tier1LastRecord(t, logFile, "ADD", pod.ContainerID)
			t.Logf("ADD of %s/%s took %v; log: %s", pod.Namespace, pod.Name, took.Round(time.Microsecond), rec.raw)

			if tc.gated {
				o, ok := <-opened
				if !ok || o.Err != nil {
					t.Fatalf("the path did not open: %v", o.Err)
				}
				lag := tier1CheckOpened(t, "gated on "+testbed.ProbeDB, o.Requested, o.At, returned)
				t.Logf("path open at +%.1fms, ADD returned %v after it", tier1MsSince(start, o.At), lag.Round(time.Microsecond))
				if got := rec.probeOrigins()[testbed.ProbeDB]; got != tc.origin {
					t.Errorf("log: probe %s has origin %q, want %q: %s", testbed.ProbeDB, got, tc.origin, rec.raw)
				}
			} else if took > 5*time.Second {
				// Still blocked: a gate on the db would have waited for the 10 s timeout.
				t.Errorf("ADD took %v with the path blocked, want it at once (not gated on the db)", took)
			}
			if rec.Outcome != tc.outcome {
				t.Errorf("log: outcome %q, want %q: %s", rec.Outcome, tc.outcome, rec.raw)
			}
			// A skipped pod's record may still say which rule and probes would have applied.
			if tc.outcome != "skipped" {
				if rec.Rule != tc.rule {
					t.Errorf("log: rule %q, want %q", rec.Rule, tc.rule)
				}
				if !tc.gated && len(rec.Probes) > 0 {
					t.Errorf("log: probes %v, want none: %s", rec.Probes, rec.raw)
				}
			}
			if tc.reason != "" && !strings.Contains(rec.Reason, tc.reason) {
				t.Errorf("log: reason %q, want it to name %q", rec.Reason, tc.reason)
			}
			if got := strings.Contains(rec.Annotations, "ignored"); got != tc.ignored {
				t.Errorf("log: annotations %q, want ignored=%v", rec.Annotations, tc.ignored)
			}
			if err := b.Del(ctx, list, pod); err != nil {
				t.Errorf("DEL: %v", err)
			}
		})
	}

	// An annotation past a cap, malformed, or not allowed fails ADD at once with code 7 (invalid
	// config) naming the annotation, as the kubelet's event will show it; the DEL containerd then
	// sends succeeds.
	for _, tc := range []struct {
		name        string
		policy      map[string]any
		annotations map[string]string
		key         string // the annotation the error must name
		why         string // and what else it must say: the value, the cap or the accepted form
	}{
		{"timeout above maxTimeout", nil, map[string]string{"netready.dev/timeout": "90s"}, "netready.dev/timeout", "maxTimeout"},
		{"hostname probe", nil, map[string]string{"netready.dev/probes": "tcp://db.example.com:5432"}, "netready.dev/probes", "db.example.com"},
		{"malformed probe", nil, map[string]string{"netready.dev/probes": testbed.ProbeDB + ",ftp://198.51.100.10"}, "netready.dev/probes", "ftp"},
		{"more than maxProbes", map[string]any{"maxProbes": 1}, map[string]string{"netready.dev/probes": testbed.ProbeDB + ",icmp://198.51.100.10"}, "netready.dev/probes", "maxProbes"},
		{"skip without allowSkip", nil, map[string]string{"netready.dev/skip": "true"}, "netready.dev/skip", "allowSkip"},
		{"unknown netready annotation", nil, map[string]string{"netready.dev/probe": testbed.ProbeDB}, "netready.dev/probe", "netready.dev/probes"},
	} {
		t.Run("invalid/"+tc.name, func(t *testing.T) {
			logFile, nr := conf("invalid-"+strings.ReplaceAll(tc.name, " ", "-"), tc.policy)
			list := confList(t, b, testbed.K3sConflist("1.0.0", tier1Netready(t, nr)))
			pod := newPod(t, b)
			pod.Annotations = tc.annotations
			start := time.Now()
			_, err := b.Add(ctx, list, pod)
			took := time.Since(start)
			if err == nil {
				t.Fatalf("ADD with %v succeeded, want code 7 naming %s", tc.annotations, tc.key)
			}
			t.Logf("ADD failed after %v: %v", took.Round(time.Microsecond), err)
			e := tier1CNIError(err)
			switch {
			case e == nil:
				t.Errorf("ADD error %T %v, want a CNI error", err, err)
			case e.Code != 7:
				t.Errorf("ADD error code %d, want 7 (invalid config): %v", e.Code, err)
			case !strings.Contains(e.Msg, `"`+tc.key+`"`):
				t.Errorf("ADD error %q does not name the annotation %q", e.Msg, tc.key)
			case !strings.Contains(e.Msg, tc.why):
				t.Errorf("ADD error %q does not say %q", e.Msg, tc.why)
			}
			if took > 5*time.Second {
				t.Errorf("ADD took %v to refuse the annotation, want at once", took)
			}
			if rec := tier1LastRecord(t, logFile, "ADD", pod.ContainerID); rec.Code != 7 || !strings.Contains(rec.Error, tc.key) {
				t.Errorf("log: code %d, error %q; want code 7 naming %s", rec.Code, rec.Error, tc.key)
			}
			if err := b.Del(ctx, list, pod); err != nil {
				t.Errorf("DEL after the failed ADD: %v", err)
			}
		})
	}
}
