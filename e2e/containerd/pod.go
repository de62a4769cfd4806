package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// PodConfig is what crictl's pod config (CRI PodSandboxConfig) says of a pod here.
type PodConfig struct {
	Name        string
	Namespace   string // default "default"
	UID         string // default derived from the name
	Annotations map[string]string
}

// Pod is a sandbox made by RunPod.
type Pod struct {
	ID         string // the sandbox id crictl printed
	Config     PodConfig
	File       string // the pod config crictl read
	ReportDir  string // host dir mounted at /report in its containers
	containers int
}

// ContainerConfig is what crictl's container config (CRI ContainerConfig) says of a container.
type ContainerConfig struct {
	Name    string
	Image   string // default ProbeImage.Name
	Command []string
	Args    []string
}

// ReportMount is where a pod's ReportDir appears in its containers.
const ReportMount = "/report"

// RunPod runs `crictl runp` with a pod config written for pod: its log dir and report dir under
// the runtime's dir, its cgroup under CgroupParent. It returns when RunPodSandbox has returned,
// that is after the CNI ADD of the whole chain.
func (r *Runtime) RunPod(ctx context.Context, pod PodConfig) (*Pod, error) {
	if pod.Namespace == "" {
		pod.Namespace = "default"
	}
	if pod.UID == "" {
		pod.UID = "uid-" + pod.Namespace + "-" + pod.Name
	}
	base := pod.Namespace + "_" + pod.Name
	p := &Pod{Config: pod, File: r.path("pods", base+".json"), ReportDir: r.path("reports", base)}
	for _, d := range []string{p.ReportDir, r.path("logs", base)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	annotations := pod.Annotations
	if annotations == nil {
		annotations = map[string]string{}
	}
	cfg := map[string]any{
		"metadata":      map[string]any{"name": pod.Name, "namespace": pod.Namespace, "uid": pod.UID, "attempt": 0},
		"hostname":      pod.Name,
		"log_directory": r.path("logs", base),
		"annotations":   annotations,
		"linux":         map[string]any{"cgroup_parent": r.CgroupParent},
	}
	if err := writeJSON(p.File, cfg); err != nil {
		return nil, err
	}
	out, err := r.Crictl(ctx, "runp", p.File)
	if err != nil {
		return nil, err
	}
	p.ID = strings.TrimSpace(string(out))
	return p, nil
}

// CreateContainer runs `crictl create --no-pull` for a container of pod, with the pod's report
// dir mounted at ReportMount, and returns its id.
func (r *Runtime) CreateContainer(ctx context.Context, pod *Pod, c ContainerConfig) (string, error) {
	if c.Image == "" {
		c.Image = ProbeImage.Name
	}
	pod.containers++
	file := strings.TrimSuffix(pod.File, ".json") + fmt.Sprintf("-%d-%s.json", pod.containers, c.Name)
	cfg := map[string]any{
		"metadata": map[string]any{"name": c.Name, "attempt": 0},
		"image":    map[string]any{"image": c.Image},
		"log_path": fmt.Sprintf("%s-%d.log", c.Name, pod.containers),
		"mounts":   []map[string]any{{"container_path": ReportMount, "host_path": pod.ReportDir}},
		"linux":    map[string]any{},
	}
	if c.Command != nil {
		cfg["command"] = c.Command
	}
	if c.Args != nil {
		cfg["args"] = c.Args
	}
	if err := writeJSON(file, cfg); err != nil {
		return "", err
	}
	out, err := r.Crictl(ctx, "create", "--no-pull", pod.ID, file, pod.File)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// StartContainer runs `crictl start`.
func (r *Runtime) StartContainer(ctx context.Context, id string) error {
	_, err := r.Crictl(ctx, "start", id)
	return err
}

// RunContainer is CreateContainer then StartContainer.
func (r *Runtime) RunContainer(ctx context.Context, pod *Pod, c ContainerConfig) (string, error) {
	id, err := r.CreateContainer(ctx, pod, c)
	if err != nil {
		return "", err
	}
	return id, r.StartContainer(ctx, id)
}

// ContainerState returns the CRI state (CONTAINER_RUNNING, CONTAINER_EXITED, ...) and exit code
// of a container, from `crictl inspect`.
func (r *Runtime) ContainerState(ctx context.Context, id string) (string, int, error) {
	out, err := r.Crictl(ctx, "inspect", "-o", "json", id)
	if err != nil {
		return "", 0, err
	}
	var v struct {
		Status struct {
			State    string `json:"state"`
			ExitCode int    `json:"exitCode"`
		} `json:"status"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		return "", 0, fmt.Errorf("crictl inspect %s: %w", id, err)
	}
	return v.Status.State, v.Status.ExitCode, nil
}

// WaitExited polls the container's state until it has exited and returns its exit code.
func (r *Runtime) WaitExited(ctx context.Context, id string) (int, error) {
	for {
		state, code, err := r.ContainerState(ctx, id)
		if err != nil {
			return 0, err
		}
		if state == "CONTAINER_EXITED" {
			return code, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("container %s still %s: %w", id, state, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Logs returns `crictl logs` of a container.
func (r *Runtime) Logs(ctx context.Context, id string) string {
	out, err := r.Crictl(ctx, "logs", id)
	if err != nil {
		return err.Error()
	}
	return string(out)
}

// RemovePod runs `crictl stopp` and `crictl rmp`: the chain's DEL runs, the pod's netns,
// containers and cgroups go.
func (r *Runtime) RemovePod(ctx context.Context, pod *Pod) error {
	_, err := r.Crictl(ctx, "stopp", pod.ID)
	_, err2 := r.Crictl(ctx, "rmp", pod.ID)
	return errors.Join(err, err2)
}

// WaitFile polls for a file (a probe's report, renamed into place whole) and returns its content.
func WaitFile(ctx context.Context, path string) ([]byte, error) {
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			return b, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %s: %w", filepath.Base(path), ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
