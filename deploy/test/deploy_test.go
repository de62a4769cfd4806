// Package test checks deploy/: the Helm chart rendered with helm's own packages and the plain
// manifest, every object validated against the Kubernetes schema, offline. A module of its own so
// helm's and Kubernetes' dependencies stay out of the plugin's go.mod.
package test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/yannh/kubeconform/pkg/resource"
	"github.com/yannh/kubeconform/pkg/validator"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/netready/netready/pkg/config"
)

var update = flag.Bool("update", false, "rewrite deploy/netready.yaml from the chart's defaults")

const (
	chartDir     = "../helm/netready"
	manifestFile = "../netready.yaml"
	k3sConfDir   = "/var/lib/rancher/k3s/agent/etc/cni/net.d"
	k3sBinDir    = "/var/lib/rancher/k3s/data/cni"
)

// render renders the chart as `helm template NAME -n NS --set ...` would, with values merged
// over values.yaml, and returns the objects in file order.
func render(t *testing.T, release, namespace string, values map[string]any) ([]string, error) {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	vals, err := chartutil.ToRenderValues(chrt, values, chartutil.ReleaseOptions{
		Name: release, Namespace: namespace, IsInstall: true, Revision: 1,
	}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	if err := chartutil.ValidateAgainstSchema(chrt, vals["Values"].(chartutil.Values)); err != nil {
		return nil, err
	}
	files, err := engine.Render(chrt, vals)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		if strings.HasSuffix(n, ".yaml") {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var docs []string
	for _, n := range names {
		for _, d := range splitDocs(files[n]) {
			docs = append(docs, "# Source: "+n+"\n"+d)
		}
	}
	return docs, nil
}

func splitDocs(s string) []string {
	var out []string
	for _, d := range strings.Split(s, "\n---") {
		if strings.TrimSpace(stripComments(d)) != "" {
			out = append(out, strings.TrimLeft(d, "\n"))
		}
	}
	return out
}

func stripComments(d string) string {
	var b strings.Builder
	for _, l := range strings.Split(d, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

var (
	validatorOnce sync.Once
	schemaDir     string // the validator's schemas, removed by TestMain
	kcValidator   validator.Validator
	validatorErr  error
)

// schemaValidator is kubeconform with strict schemas made from the Kubernetes OpenAPI definitions
// that kubeconform's own module ships (its fixtures/cache holds the _definitions.json of
// kubernetes-json-schema): no network, pinned by go.mod. Strict, as openapi2jsonschema --strict
// makes them: an object with declared properties admits no other key, so a typo is an error.
func schemaValidator(t *testing.T) validator.Validator {
	t.Helper()
	validatorOnce.Do(func() { kcValidator, validatorErr = newSchemaValidator() })
	if validatorErr != nil {
		t.Fatalf("schema validator: %v", validatorErr)
	}
	return kcValidator
}

func newSchemaValidator() (validator.Validator, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/yannh/kubeconform").Output()
	if err != nil {
		return nil, fmt.Errorf("locate kubeconform's module (go mod download): %w", err)
	}
	cache := filepath.Join(strings.TrimSpace(string(out)), "fixtures", "cache")
	entries, err := os.ReadDir(cache)
	if err != nil {
		return nil, err
	}
	var defs map[string]map[string]any
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(cache, e.Name()))
		if err != nil {
			return nil, err
		}
		var doc struct {
			Definitions map[string]map[string]any `json:"definitions"`
		}
		if json.Unmarshal(b, &doc) == nil && doc.Definitions["io.k8s.api.apps.v1.DaemonSet"] != nil {
			defs = doc.Definitions
			break
		}
	}
	if defs == nil {
		return nil, fmt.Errorf("no Kubernetes definitions under %s", cache)
	}
	for _, d := range defs {
		strictify(d)
	}
	dir, err := os.MkdirTemp("", "nr-deploy-schemas-")
	if err != nil {
		return nil, err
	}
	// The schemas are read when the validator first meets a kind, so the dir lives as long as
	// the test binary: TestMain removes it.
	schemaDir = dir
	for file, def := range map[string]string{
		"namespace-v1.json":      "io.k8s.api.core.v1.Namespace",
		"configmap-v1.json":      "io.k8s.api.core.v1.ConfigMap",
		"serviceaccount-v1.json": "io.k8s.api.core.v1.ServiceAccount",
		"daemonset-apps-v1.json": "io.k8s.api.apps.v1.DaemonSet",
	} {
		b, err := json.Marshal(map[string]any{"$ref": "#/definitions/" + def, "definitions": defs})
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, file), b, 0o644); err != nil {
			return nil, err
		}
	}
	return validator.New([]string{dir + "/{{ .ResourceKind }}{{ .KindSuffix }}.json"}, validator.Opts{
		Strict: true, KubernetesVersion: "master",
	})
}

// strictify sets additionalProperties false on every object schema that declares properties and
// says nothing of others, recursively.
func strictify(s map[string]any) {
	if props, ok := s["properties"].(map[string]any); ok {
		if _, set := s["additionalProperties"]; !set {
			s["additionalProperties"] = false
		}
		for _, p := range props {
			if m, ok := p.(map[string]any); ok {
				strictify(m)
			}
		}
	}
	for _, k := range []string{"items", "additionalProperties"} {
		if m, ok := s[k].(map[string]any); ok {
			strictify(m)
		}
	}
	for _, k := range []string{"oneOf", "anyOf", "allOf"} {
		if l, ok := s[k].([]any); ok {
			for _, e := range l {
				if m, ok := e.(map[string]any); ok {
					strictify(m)
				}
			}
		}
	}
}

// validate checks one object against the schema; the error names the object and each violation.
func validate(t *testing.T, doc string) error {
	t.Helper()
	res := schemaValidator(t).ValidateResource(resource.Resource{Path: "rendered", Bytes: []byte(doc)})
	switch res.Status {
	case validator.Valid:
		return nil
	case validator.Invalid, validator.Error:
		return fmt.Errorf("%s: %v", firstLine(doc), res.Err)
	default:
		return fmt.Errorf("%s: not validated (status %d: %v)", firstLine(doc), res.Status, res.Err)
	}
}

func firstLine(doc string) string { l, _, _ := strings.Cut(doc, "\n"); return l }

// objects are the rendered documents decoded into Kubernetes' own types, strictly.
type objects struct {
	ns  *corev1.Namespace
	cm  *corev1.ConfigMap
	ds  *appsv1.DaemonSet
	all []string
}

func decode(t *testing.T, docs []string) objects {
	t.Helper()
	var o objects
	for _, d := range docs {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(d), &meta); err != nil {
			t.Fatalf("%s: not YAML: %v", firstLine(d), err)
		}
		var into any
		switch meta.Kind {
		case "Namespace":
			o.ns = &corev1.Namespace{}
			into = o.ns
		case "ConfigMap":
			o.cm = &corev1.ConfigMap{}
			into = o.cm
		case "DaemonSet":
			o.ds = &appsv1.DaemonSet{}
			into = o.ds
		default:
			t.Fatalf("%s: unexpected kind %q", firstLine(d), meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(d), into); err != nil {
			t.Fatalf("%s: %v", firstLine(d), err)
		}
		o.all = append(o.all, meta.Kind)
	}
	if o.cm == nil || o.ds == nil {
		t.Fatalf("want a ConfigMap and a DaemonSet, got %v", o.all)
	}
	return o
}

// checkDaemonSet asserts what a node needs from the DaemonSet, whatever the values.
func checkDaemonSet(t *testing.T, o objects, confDir, binDir string) {
	t.Helper()
	ds := o.ds
	spec := ds.Spec.Template.Spec
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q, want system-node-critical", spec.PriorityClassName)
	}
	tolerAll := false
	for _, tol := range spec.Tolerations {
		if tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == "" {
			tolerAll = true
		}
	}
	if !tolerAll {
		t.Errorf("tolerations %+v: want one {operator: Exists} that tolerates every taint", spec.Tolerations)
	}
	if !spec.HostNetwork {
		t.Error("hostNetwork false: the agent would wait on the chain it installs")
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template's labels %v", k, v, ds.Spec.Template.Labels)
		}
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("want 1 container, got %d", len(spec.Containers))
	}
	c := spec.Containers[0]
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
		found := false
		for _, v := range spec.Volumes {
			found = found || v.Name == m.Name
		}
		if !found {
			t.Errorf("volumeMount %q has no volume", m.Name)
		}
	}
	if hostPaths["cni-conf"] != confDir || hostPaths["cni-bin"] != binDir {
		t.Errorf("host paths conf %q bin %q, want %q %q", hostPaths["cni-conf"], hostPaths["cni-bin"], confDir, binDir)
	}
	args := strings.Join(c.Args, " ")
	for _, want := range []string{
		"agent",
		"--cni-conf-dir=" + mounts["cni-conf"],
		"--cni-bin-dir=" + mounts["cni-bin"],
		"--config=" + mounts["config"] + "/netready.json",
		"--metrics-addr=:",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("agent args %q lack %q", args, want)
		}
	}
	conf := configOf(t, o)
	if conf.LogFile == "" || !strings.HasPrefix(conf.LogFile, mounts["log"]+"/") || hostPaths["log"] != mounts["log"] {
		t.Errorf("logFile %q must sit in the log dir, mounted at the same path on node (%q) and agent (%q)",
			conf.LogFile, hostPaths["log"], mounts["log"])
	}
	if !strings.Contains(args, "--log="+conf.LogFile) {
		t.Errorf("agent args %q: want --log=%s, the file ADD writes", args, conf.LogFile)
	}
	metrics := false
	for _, p := range c.Ports {
		metrics = metrics || p.Name == "metrics"
	}
	if !metrics {
		t.Error("no container port named metrics")
	}
	sc := c.SecurityContext
	if sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != 0 || sc.Privileged == nil || *sc.Privileged ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("securityContext %+v: want uid 0 (the node's CNI dirs are root's), unprivileged, no escalation", sc)
	}
	if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want memory requests and limits", c.Resources)
	}
}

// configOf parses the ConfigMap's plugin object with netready's own parser, as an ADD would.
func configOf(t *testing.T, o objects) *config.Conf {
	t.Helper()
	raw, ok := o.cm.Data["netready.json"]
	if !ok {
		t.Fatalf("ConfigMap has no netready.json: keys %v", o.cm.Data)
	}
	conf, err := config.Parse([]byte(raw))
	if err != nil {
		t.Fatalf("ConfigMap's netready.json does not parse:\n%s\n%v", raw, err)
	}
	if conf.Type != "netready" || !conf.Capabilities["io.kubernetes.cri.pod-annotations"] {
		t.Errorf("plugin object: type %q capabilities %v; want netready with the pod-annotations capability", conf.Type, conf.Capabilities)
	}
	return conf
}

func TestChart(t *testing.T) {
	for _, tc := range []struct {
		name            string
		values          map[string]any
		confDir, binDir string
		check           func(t *testing.T, o objects)
	}{
		{name: "defaults are K3s's", confDir: k3sConfDir, binDir: k3sBinDir,
			check: func(t *testing.T, o objects) {
				c := configOf(t, o)
				if len(c.Base.Probes) != 0 || !slices.Contains(c.Skip.Namespaces, "kube-system") {
					t.Errorf("defaults: probes %v, skip %+v; want none and kube-system skipped", c.Base.Probes, c.Skip)
				}
			}},
		{name: "standard paths", values: map[string]any{"cni": map[string]any{"paths": "standard"}},
			confDir: "/etc/cni/net.d", binDir: "/opt/cni/bin"},
		{name: "explicit dirs win", values: map[string]any{"cni": map[string]any{
			"paths": "standard", "confDir": "/srv/k3s/agent/etc/cni/net.d", "binDir": "/srv/k3s/data/cni"}},
			confDir: "/srv/k3s/agent/etc/cni/net.d", binDir: "/srv/k3s/data/cni"},
		{name: "config fields reach the plugin", confDir: k3sConfDir, binDir: k3sBinDir,
			values: map[string]any{"config": map[string]any{
				"probes":    []any{"tcp://10.15.21.167:5432", "icmp://10.15.21.1"},
				"timeout":   "45s",
				"onTimeout": "allow",
				"gateway":   false,
				"rules":     []any{map[string]any{"namespaces": []any{"analytics"}, "timeout": "60s"}},
			}},
			check: func(t *testing.T, o objects) {
				c := configOf(t, o)
				if len(c.Base.Probes) != 2 || c.Base.Timeout.String() != "45s" || c.Base.Gateway || len(c.Rules) != 1 {
					t.Errorf("config not carried over: %+v, rules %d", c.Base, len(c.Rules))
				}
			}},
		{name: "podWatch from K3s's kubelet by default", confDir: k3sConfDir, binDir: k3sBinDir,
			check: func(t *testing.T, o objects) {
				checkK3sPodWatch(t, o, "/var/lib/rancher/k3s", true)
			}},
		{name: "podWatch with a custom K3s data dir", confDir: k3sConfDir, binDir: k3sBinDir,
			values: map[string]any{"k3s": map[string]any{"dataDir": "/srv/k3s"}},
			check: func(t *testing.T, o objects) {
				checkK3sPodWatch(t, o, "/srv/k3s", true)
			}},
		{name: "podWatch off", confDir: k3sConfDir, binDir: k3sBinDir,
			values: map[string]any{"k3s": map[string]any{"podWatch": false}},
			check: func(t *testing.T, o objects) {
				checkK3sPodWatch(t, o, "/var/lib/rancher/k3s", false)
			}},
		{name: "podWatch not K3s's outside K3s", confDir: "/etc/cni/net.d", binDir: "/opt/cni/bin",
			values: map[string]any{"cni": map[string]any{"paths": "standard"}},
			check: func(t *testing.T, o objects) {
				checkK3sPodWatch(t, o, "/var/lib/rancher/k3s", false)
			}},
		{name: "podWatch set in the config", confDir: k3sConfDir, binDir: k3sBinDir,
			values: map[string]any{"config": map[string]any{"podWatch": map[string]any{"server": "https://10.0.0.1:6443",
				"caFile": "/etc/kubernetes/pki/ca.crt", "certFile": "/var/lib/kubelet/pki/kubelet-client-current.pem",
				"keyFile": "/var/lib/kubelet/pki/kubelet-client-current.pem"}}},
			check: func(t *testing.T, o objects) {
				checkK3sPodWatch(t, o, "/var/lib/rancher/k3s", false)
				if c := configOf(t, o); c.PodWatch == nil || c.PodWatch.Server != "https://10.0.0.1:6443" {
					t.Errorf("config.podWatch not carried over: %+v", c.PodWatch)
				}
			}},
		{name: "namespace labels opt-in", confDir: k3sConfDir, binDir: k3sBinDir,
			values: map[string]any{"agent": map[string]any{"namespaceLabels": true}},
			check: func(t *testing.T, o objects) {
				if !strings.Contains(strings.Join(o.ds.Spec.Template.Spec.Containers[0].Args, " "), "--metrics-namespaces") {
					t.Error("agent.namespaceLabels=true: no --metrics-namespaces flag")
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			docs, err := render(t, "netready", "netready", tc.values)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			for _, d := range docs {
				if err := validate(t, d); err != nil {
					t.Error(err)
				}
			}
			o := decode(t, docs)
			checkDaemonSet(t, o, tc.confDir, tc.binDir)
			if tc.check != nil {
				tc.check(t, o)
			}
		})
	}
}

// checkK3sPodWatch: whether the agent is told to fill podWatch from K3s's kubelet credentials in
// dataDir, with that kubeconfig mounted read-only at the node's path.
func checkK3sPodWatch(t *testing.T, o objects, dataDir string, want bool) {
	t.Helper()
	spec := o.ds.Spec.Template.Spec
	kc := dataDir + "/agent/kubelet.kubeconfig"
	hasArg := slices.Contains(spec.Containers[0].Args, "--k3s-data-dir="+dataDir)
	hasMount := slices.ContainsFunc(spec.Containers[0].VolumeMounts, func(m corev1.VolumeMount) bool {
		return m.Name == "kubelet-kubeconfig" && m.MountPath == kc && m.ReadOnly
	})
	hasVol := slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool {
		return v.Name == "kubelet-kubeconfig" && v.HostPath != nil && v.HostPath.Path == kc
	})
	if hasArg != want || hasMount != want || hasVol != want {
		t.Errorf("--k3s-data-dir=%s %v, read-only mount of %s %v, its hostPath %v; want all %v", dataDir, hasArg, kc, hasMount, hasVol, want)
	}
}

// TestChartRejects: values a user can get wrong fail the render with a message saying what to do.
func TestChartRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"unknown paths preset", map[string]any{"cni": map[string]any{"paths": "rke2"}}, `cni.paths is "rke2": want k3s or standard`},
		{"typo in a config field", map[string]any{"config": map[string]any{"probe": []any{"tcp://10.0.0.1:1"}}}, "probe"},
		{"probe not a list", map[string]any{"config": map[string]any{"probes": "tcp://10.0.0.1:1"}}, "probes"},
		{"podWatch over http", map[string]any{"config": map[string]any{"podWatch": map[string]any{"server": "http://10.0.0.1:6443",
			"caFile": "/a", "certFile": "/b", "keyFile": "/c"}}}, "podWatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, "netready", "netready", tc.values)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestValidatorCatches proves the schema check is not vacuous: a misspelt field and a wrong type
// in an otherwise valid DaemonSet are both reported.
func TestValidatorCatches(t *testing.T) {
	docs, err := render(t, "netready", "netready", nil)
	if err != nil {
		t.Fatal(err)
	}
	var ds string
	for _, d := range docs {
		if strings.Contains(d, "kind: DaemonSet") {
			ds = d
		}
	}
	for _, tc := range []struct{ name, from, to string }{
		{"misspelt field", "      tolerations:", "      tolerration:"},
		{"wrong type", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: thirty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := strings.Replace(ds, tc.from, tc.to, 1)
			if bad == ds {
				t.Fatalf("the rendered DaemonSet has no %q", tc.from)
			}
			if err := validate(t, bad); err == nil {
				t.Errorf("%s accepted", tc.name)
			}
		})
	}
}

// TestPlainManifest: deploy/netready.yaml is the chart with its defaults (release and namespace
// netready) plus the Namespace, so the two cannot drift; `go test -update` rewrites it.
func TestPlainManifest(t *testing.T) {
	docs, err := render(t, "netready", "netready", nil)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	want.WriteString(manifestHeader)
	want.WriteString("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: netready\n  labels:\n    app.kubernetes.io/name: netready\n")
	for _, d := range docs {
		want.WriteString("---\n" + strings.TrimRight(d, "\n") + "\n")
	}
	if *update {
		if err := os.WriteFile(manifestFile, want.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(manifestFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("%s is not the chart's default rendering: run `cd deploy/test && go test -run TestPlainManifest -update`", manifestFile)
	}
	all := splitDocs(string(got))
	for _, d := range all {
		if err := validate(t, d); err != nil {
			t.Error(err)
		}
	}
	o := decode(t, all)
	if o.ns == nil || o.ns.Name != o.ds.Namespace || o.cm.Namespace != o.ds.Namespace {
		t.Errorf("the Namespace, ConfigMap and DaemonSet must share one namespace")
	}
	checkDaemonSet(t, o, k3sConfDir, k3sBinDir)
}

const manifestHeader = `# netready on every node of a K3s cluster: kubectl apply -f deploy/netready.yaml
# Generated from deploy/helm/netready with its default values (cd deploy/test && go test -update);
# edit the chart, not this file. Put your probes in the ConfigMap's netready.json. For
# /etc/cni/net.d + /opt/cni/bin (outside K3s) change the two hostPath paths and drop the
# kubelet-kubeconfig volume and --k3s-data-dir (K3s's podWatch), or use the chart with
# --set cni.paths=standard.
`

func TestMain(m *testing.M) {
	code := m.Run()
	if schemaDir != "" {
		os.RemoveAll(schemaDir)
	}
	os.Exit(code)
}
