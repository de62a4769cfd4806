package k3s

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// PodSpec is a pod of the app image: one app container, optionally an init container running
// the wait loop. The pod runs once (restartPolicy Never) unless Sleep keeps it up.
type PodSpec struct {
	Namespace, Name string
	Annotations     map[string]string
	InitLoop        bool     // an init container waits for the db first (`until nc -z -w1; do sleep 1; done`)
	AppArgs         []string // extra flags of the app
	Sleep           bool     // the app stays up after connecting (the pod stays Running)
	NodeName        string   // bind the pod to this node (no scheduling); "" lets the scheduler choose
}

// Manifest is the pod as JSON for `kubectl apply -f -`.
func (p PodSpec) Manifest() string {
	app := map[string]any{
		"name": "app", "image": AppImage.Name, "imagePullPolicy": "Never",
		"args": append(append([]string{}, p.AppArgs...), sleepFlag(p.Sleep)...),
	}
	spec := map[string]any{
		"restartPolicy":                 "Never",
		"automountServiceAccountToken":  false,
		"terminationGracePeriodSeconds": 1,
		"enableServiceLinks":            false,
		"containers":                    []any{app},
	}
	if p.NodeName != "" {
		spec["nodeName"] = p.NodeName
	}
	if p.InitLoop {
		spec["initContainers"] = []any{map[string]any{
			"name": "wait-for-db", "image": AppImage.Name, "imagePullPolicy": "Never", "args": []string{"-init"},
		}}
	}
	meta := map[string]any{"name": p.Name, "namespace": p.Namespace}
	if len(p.Annotations) > 0 {
		meta["annotations"] = p.Annotations
	}
	b, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
	return string(b)
}

func sleepFlag(on bool) []string {
	if on {
		return []string{"-sleep"}
	}
	return nil
}

// CreateNamespace makes a namespace labelled for the tier's cleanup and waits for its default
// service account (a pod cannot be created before it).
func (n *Node) CreateNamespace(ctx context.Context, name string) error {
	ns := fmt.Sprintf(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":%q,"labels":{"netready-e2e":"1"}}}`, name)
	if err := n.API.Do(ctx, "POST", "/api/v1/namespaces", ns, nil); err != nil && !strings.Contains(err.Error(), "AlreadyExists") {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	for {
		if err := n.API.Do(ctx, "GET", "/api/v1/namespaces/"+name+"/serviceaccounts/default", nil, nil); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("namespace %s: no default service account: %w", name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Apply creates the pod.
func (n *Node) Apply(ctx context.Context, p PodSpec) error {
	if err := n.API.Do(ctx, "POST", "/api/v1/namespaces/"+p.Namespace+"/pods", p.Manifest(), nil); err != nil {
		return fmt.Errorf("creating pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// DeletePod deletes a pod (grace period 0 when now).
func (n *Node) DeletePod(ctx context.Context, ns, name string, now bool) error {
	q := ""
	if now {
		q = "?gracePeriodSeconds=0"
	}
	return n.API.Do(ctx, "DELETE", "/api/v1/namespaces/"+ns+"/pods/"+name+q, nil, nil)
}

// WaitPhase polls the pod's phase (every 50 ms) until it is one of want, or timeout.
func (n *Node) WaitPhase(ctx context.Context, ns, name string, timeout time.Duration, want ...string) (*Pod, error) {
	deadline := time.Now().Add(timeout)
	for {
		p, err := n.API.GetPod(ctx, ns, name)
		if err == nil {
			for _, w := range want {
				if p.Status.Phase == w {
					return p, nil
				}
			}
			if p.Status.Phase == "Failed" {
				return p, fmt.Errorf("pod %s/%s failed: %s", ns, name, n.describe(ctx, ns, name))
			}
		}
		if n.exited != nil {
			select {
			case <-n.exited:
				return p, fmt.Errorf("pod %s/%s: k3s exited while waiting for phase %v; its log: %s\n%s", ns, name, want, n.Log, tail(n.Log, 15))
			default:
			}
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("pod %s/%s: phase %q after %v (last error %v), want %v; events: %s", ns, name, p.Status.Phase, timeout, err, want, n.describe(ctx, ns, name))
		}
		select {
		case <-ctx.Done():
			return p, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (n *Node) describe(ctx context.Context, ns, name string) string {
	evs, err := n.API.PodEvents(ctx, ns, name)
	if err != nil {
		return err.Error()
	}
	var s []string
	for _, e := range evs {
		s = append(s, fmt.Sprintf("%s (x%d): %s", e.Reason, e.Count, e.Message))
	}
	return strings.Join(s, "; ")
}

// AppReport reads the report line the app (or the init loop: container "wait-for-db") printed.
func (n *Node) AppReport(ctx context.Context, ns, name, container string) (*Report, error) {
	out, err := n.API.Logs(ctx, ns, name, container)
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "{") {
			var r Report
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				return nil, fmt.Errorf("pod %s/%s: report %q: %w", ns, name, l, err)
			}
			return &r, nil
		}
	}
	return nil, fmt.Errorf("pod %s/%s container %s printed no report: %q", ns, name, container, out)
}

// Report is cmd/app's report line.
type Report struct {
	Role        string `json:"role"`
	Target      string `json:"target"`
	StartedNS   int64  `json:"started_ns"`
	ConnectedNS int64  `json:"connected_ns"`
	FirstFailed bool   `json:"first_failed"`
	FirstError  string `json:"first_error"`
	Attempts    int    `json:"attempts"`
}

// MSToConnect is the time from the app's start to the end of its first successful connect.
func (r *Report) MSToConnect() float64 { return float64(r.ConnectedNS-r.StartedNS) / 1e6 }
