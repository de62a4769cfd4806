package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/netready/netready/e2e/testbed"
)

// cvVersions are the CNI versions netready speaks, each tried as the list's cniVersion.
var cvVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// TestConformanceVersions runs K3s's chain with netready last through libcni at every version
// netready speaks, as containerd would, and the binary directly where libcni would not send a
// verb: ADD's result is the chain's, in the list's version and shape; CHECK from 0.4.0; STATUS and
// GC at 1.1.0 and code 1 below; DEL always succeeds, twice, after a failed ADD and without netns.
func TestConformanceVersions(t *testing.T) {
	for _, v := range cvVersions {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			b := testbed.New(t, testbed.Options{Plugins: testbed.WithNetready, PluginStderr: cvLogWriter{t}})
			plain := confList(t, b, testbed.K3sConflist(v))
			with := confList(t, b, testbed.K3sConflist(v, cvNetready(`"timeout":"10s","probes":[`+cvQuote(testbed.ProbeDB)+`]`)))
			atLeast := func(min string) bool { return cvIndex(t, v) >= cvIndex(t, min) }

			// ADD: the chain without netready, then with it, on two pods of the node.
			podPlain, podWith := newPod(t, b), newPod(t, b)
			resPlain := cvAdd(ctx, t, b, plain, podPlain)
			resWith := cvAdd(ctx, t, b, with, podWith)
			for name, res := range map[string]types.Result{"without netready": resPlain, "with netready": resWith} {
				if res.Version() != v {
					t.Errorf("ADD %s: result version %s, want the list's %s", name, res.Version(), v)
				}
			}
			jsonPlain, jsonWith := cvJSON(t, resPlain), cvJSON(t, resWith)
			if jsonWith["cniVersion"] != v || jsonPlain["cniVersion"] != v {
				t.Errorf("result cniVersion: without netready %v, with %v; want %s", jsonPlain["cniVersion"], jsonWith["cniVersion"], v)
			}
			if sp, sw := cvShape(jsonPlain), cvShape(jsonWith); !reflect.DeepEqual(sp, sw) {
				t.Errorf("ADD result shape differs with netready:\nwithout %v\n   with %v", sp, sw)
			}

			// Passed through unchanged: netready alone, given the chain's result for a pod whose
			// network works, prints exactly that result.
			prev, err := json.Marshal(resPlain)
			if err != nil {
				t.Fatal(err)
			}
			out := cvExec(t, b, "ADD", cvSandboxOf(podPlain), cvPluginConf(t, v, `"timeout":"5s","probes":[`+cvQuote(testbed.ProbeDB)+`]`, prev))
			if out.exit != 0 {
				t.Fatalf("netready ADD with the chain's result: exit %d, stdout %s, stderr %s", out.exit, out.stdout, out.stderr)
			}
			var echoed map[string]any
			if err := json.Unmarshal(out.stdout, &echoed); err != nil || !reflect.DeepEqual(echoed, jsonPlain) {
				t.Errorf("netready ADD printed %s (%v),\nwant its prevResult %s", out.stdout, err, prev)
			}

			// CHECK: libcni sends it from 0.4.0; below, libcni refuses and the binary answers code 1.
			if atLeast("0.4.0") {
				if err := b.Check(ctx, with, podWith); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			} else {
				if err := b.Check(ctx, with, podWith); !errors.Is(err, libcni.ErrorCheckNotSupp) {
					t.Errorf("libcni CHECK at %s: %v, want %v", v, err, libcni.ErrorCheckNotSupp)
				}
				out := cvExec(t, b, "CHECK", cvSandboxOf(podPlain), cvPluginConf(t, v, "", prev))
				out.wantCode(t, "CHECK", types.ErrIncompatibleCNIVersion, "config version does not allow CHECK")
			}

			// STATUS and GC: at 1.1.0 through libcni; below, the binary answers code 1.
			if atLeast("1.1.0") {
				if err := b.Status(ctx, with); err != nil {
					t.Errorf("STATUS: %v", err)
				}
				// Both pods are valid attachments of network cbr0: libcni DELs neither.
				if err := b.GC(ctx, with, podWith, podPlain); err != nil {
					t.Errorf("GC: %v", err)
				}
				for _, p := range []*testbed.Pod{podWith, podPlain} {
					if !hasLink(t, p, "eth0") {
						t.Errorf("GC removed the eth0 of %s, a valid attachment", p.Name)
					}
				}
			} else {
				for _, verb := range []string{"STATUS", "GC"} {
					out := cvExec(t, b, verb, nil, cvPluginConf(t, v, "", nil))
					out.wantCode(t, verb, types.ErrIncompatibleCNIVersion, "config version does not allow "+verb)
				}
			}

			// DEL, twice.
			for i := range 2 {
				if err := b.Del(ctx, with, podWith); err != nil {
					t.Errorf("DEL #%d: %v", i+1, err)
				}
			}
			if hasLink(t, podWith, "eth0") {
				t.Errorf("DEL left eth0 in the pod")
			}
			assertGone(t, filepath.Join(b.FlannelDir, podWith.ContainerID))

			// DEL after a failed ADD: netready gives up on a target that never answers, the
			// runtime DELs the sandbox (twice: kubelet retries).
			failing := confList(t, b, testbed.K3sConflist(v, cvNetready(`"timeout":"300ms","probes":["tcp://198.51.100.99:5432"]`)))
			podFail := newPod(t, b)
			if _, err := b.AddRaw(ctx, failing, podFail); err == nil {
				t.Errorf("ADD gated on a target that never answers succeeded")
			} else if code := cniCode(err); code != types.ErrTryAgainLater {
				t.Errorf("failed ADD: %v (code %d), want code %d", err, code, types.ErrTryAgainLater)
			}
			for i := range 2 {
				if err := b.Del(ctx, failing, podFail); err != nil {
					t.Errorf("DEL #%d after a failed ADD: %v", i+1, err)
				}
			}
			if hasLink(t, podFail, "eth0") {
				t.Errorf("DEL after a failed ADD left eth0 in the pod")
			}
			assertGone(t, filepath.Join(b.FlannelDir, podFail.ContainerID))

			// DEL without netns: the sandbox's netns is already gone when the runtime DELs.
			if err := podPlain.Remove(); err != nil {
				t.Fatal(err)
			}
			rt := podPlain.RuntimeConf()
			rt.NetNS = ""
			for i := range 2 {
				if err := b.Node.Do(func() error { return b.CNI().DelNetworkList(ctx, plain, rt) }); err != nil {
					t.Errorf("DEL #%d of the chain without netns: %v", i+1, err)
				}
			}
			noNetns := cvSandboxOf(podPlain)
			noNetns.netns = ""
			out = cvExec(t, b, "DEL", noNetns, cvPluginConf(t, v, "", prev))
			if out.exit != 0 || len(bytes.TrimSpace(out.stdout)) != 0 {
				t.Errorf("netready DEL without netns: exit %d, stdout %s, stderr %s; want success and no output", out.exit, out.stdout, out.stderr)
			}
		})
	}
}

// cvLogWriter puts what the plugins print on stderr (netready's log records) in the test's log.
type cvLogWriter struct{ t *testing.T }

func (w cvLogWriter) Write(p []byte) (int, error) {
	w.t.Logf("plugin stderr: %s", bytes.TrimSpace(p))
	return len(p), nil
}

// cvNetready is netready's plugin object with extra fields (JSON, without braces).
func cvNetready(fields string) string {
	return `{"type":"netready","capabilities":{"io.kubernetes.cri.pod-annotations":true}` + cvComma(fields) + `}`
}

func cvComma(fields string) string {
	if fields == "" {
		return ""
	}
	return "," + fields
}

func cvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// cvPluginConf is netready's plugin object as libcni hands it over at version v: name and
// cniVersion of the list, the capability's runtimeConfig and, if given, prevResult.
func cvPluginConf(t *testing.T, v, fields string, prev []byte) []byte {
	t.Helper()
	conf := `{"cniVersion":` + cvQuote(v) + `,"name":"cbr0","type":"netready",` +
		`"capabilities":{"io.kubernetes.cri.pod-annotations":true},` +
		`"runtimeConfig":{"io.kubernetes.cri.pod-annotations":{}}` + cvComma(fields)
	if prev != nil {
		conf += `,"prevResult":` + string(prev)
	}
	conf += "}"
	if !json.Valid([]byte(conf)) {
		t.Fatalf("invalid plugin conf %s", conf)
	}
	return []byte(conf)
}

func cvIndex(t *testing.T, v string) int {
	for i, w := range cvVersions {
		if w == v {
			return i
		}
	}
	t.Fatalf("unknown version %s", v)
	return -1
}

// cvAdd is ADD through libcni, keeping the result in the version the chain answered in.
func cvAdd(ctx context.Context, t *testing.T, b *testbed.Bed, list *libcni.NetworkConfigList, p *testbed.Pod) types.Result {
	t.Helper()
	res, err := b.AddRaw(ctx, list, p)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	return res
}

// cvJSON is a result as the runtime reads it.
func cvJSON(t *testing.T, res types.Result) map[string]any {
	t.Helper()
	raw, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// cvShape is a JSON value with every scalar replaced by its type: the fields present, at every
// depth, and the length of every list.
func cvShape(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = cvShape(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = cvShape(e)
		}
		return l
	case nil:
		return "null"
	default:
		return fmt.Sprintf("%T", x)
	}
}

// cvResult is what one run of the netready binary printed. code is the CNI error's code, 0 when
// stdout holds none.
type cvResult struct {
	stdout, stderr []byte
	exit           int
	code           uint
	msg            string
}

func (r cvResult) wantCode(t *testing.T, verb string, code uint, msg string) {
	t.Helper()
	if r.exit == 0 || r.code != code || !strings.Contains(r.msg, msg) {
		t.Errorf("netready %s: exit %d, stdout %s; want code %d saying %q", verb, r.exit, r.stdout, code, msg)
	}
	for _, out := range [][]byte{r.stdout, r.stderr} {
		if bytes.Contains(out, []byte("panic")) || bytes.Contains(out, []byte("goroutine ")) {
			t.Errorf("netready %s panicked: %s", verb, out)
		}
	}
}

// cvSandbox is what the runtime's environment says of a sandbox.
type cvSandbox struct {
	containerID, ifName, netns string
	cniArgs                    string
}

func cvSandboxOf(p *testbed.Pod) *cvSandbox {
	return &cvSandbox{
		containerID: p.ContainerID,
		ifName:      p.IfName,
		netns:       p.Path,
		cniArgs:     "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + p.Namespace + ";K8S_POD_NAME=" + p.Name + ";K8S_POD_INFRA_CONTAINER_ID=" + p.ContainerID,
	}
}

// cvExec runs the netready binary from the node netns as a runtime would: CNI_COMMAND verb for
// the sandbox (nil for STATUS and GC, which name none), with conf on stdin.
func cvExec(t *testing.T, b *testbed.Bed, verb string, sb *cvSandbox, conf []byte) cvResult {
	t.Helper()
	return cvExecWatched(t, b, verb, sb, conf, nil)
}
