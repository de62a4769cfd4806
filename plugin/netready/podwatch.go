package main

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/podwatch"
)

// CodePodDeleted is the CNI error code of an ADD that stopped waiting because
// the API server said its pod is gone. A plugin-specific code (the CNI spec
// leaves 100 and up to plugins): not 11 (try again later), which would ask
// for a retry of a sandbox nobody wants any more, and not 999, since nothing
// failed on the node. Neither the kubelet nor containerd acts on the code;
// it is for the people and scripts reading the event and the log.
const CodePodDeleted = 100

// configSource is the annotation the kubelet sets on every pod it runs ("api", "file",
// "http"), which reaches netready through the pod-annotations capability.
const configSource = "kubernetes.io/config.source"

// podWatcher asks the API server, while an ADD waits, whether its pod was
// deleted; see pkg/podwatch.
type podWatcher struct {
	conf  *config.PodWatch // nil: no watch
	pod   config.Pod
	start time.Time // the plugin's start, from which conf.After counts

	mu   sync.Mutex // guards note
	note string     // why the watch could not tell, once it gave up
}

// newPodWatcher is the watch of pod with w, nil for none. It watches only a
// pod the API server holds: not a pod outside Kubernetes (no name), and not
// a static pod (from a file or URL on the node), of which the API server
// holds only a mirror, whose UID differs and whose deletion does not delete
// the pod.
func newPodWatcher(w *config.PodWatch, pod config.Pod, start time.Time) *podWatcher {
	pw := &podWatcher{pod: pod, start: start}
	if src := pod.Annotations[configSource]; w != nil && pod.Namespace != "" && pod.Name != "" && (src == "" || src == "api") {
		pw.conf = w
	}
	return pw
}

// End is a podcheck.End: once the ADD has waited conf.After (counted from
// the plugin's start; a ready pod or a short wait never contacts the API
// server), it watches the pod, and calls end with a *podwatch.Gone when the
// API server says the pod is gone. Nothing the API server does can fail or
// delay the ADD: when the watch cannot tell (no credentials, unreachable,
// 403, slow), it notes why and the ADD waits on as it would without it.
func (pw *podWatcher) End(ctx context.Context, end context.CancelCauseFunc) (stop func()) {
	if pw.conf == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTimer(time.Until(pw.start.Add(pw.conf.After)))
		defer t.Stop()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c, err := podwatch.New(*pw.conf)
		if err != nil {
			pw.setNote(err)
			return
		}
		defer c.Close()
		err = c.Wait(ctx, podwatch.Pod{Namespace: pw.pod.Namespace, Name: pw.pod.Name, UID: pw.pod.UID})
		var gone *podwatch.Gone
		switch {
		case errors.As(err, &gone):
			end(gone)
		case ctx.Err() == nil && err != nil:
			pw.setNote(err)
		}
	}()
	return func() { cancel(); <-finished }
}

func (pw *podWatcher) setNote(err error) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	pw.note = "podWatch: cannot tell whether the pod was deleted, waited on without it: " + err.Error()
}

// Note is why the watch gave up, "" when it did not (or has not yet).
func (pw *podWatcher) Note() string {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	return pw.note
}
