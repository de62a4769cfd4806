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
	mu   sync.Mutex // guards note
	note string     // why the watch could not tell, once it gave up
}

// watchPod starts the watch for pod once the ADD has waited w.After (counted
// from start, the plugin's start): a ready pod or a short wait never
// contacts the API server. When the API server says the pod is gone, the
// gate's context is cancelled with the *podwatch.Gone as its cause. Nothing
// the API server does can fail or delay the ADD: when the watch cannot tell
// (no credentials, unreachable, 403, slow), it notes why and the ADD waits
// on as it would without it. The watch ends with ctx.
func watchPod(ctx context.Context, cancel context.CancelCauseFunc, w *config.PodWatch, pod config.Pod, start time.Time) *podWatcher {
	pw := &podWatcher{}
	if w == nil || pod.Namespace == "" || pod.Name == "" {
		return pw // not a Kubernetes pod, or no podWatch configured
	}
	if src := pod.Annotations[configSource]; src != "" && src != "api" {
		// A static pod (from a file or URL on the node): the API server holds only its
		// mirror, whose UID differs and whose deletion does not delete the pod.
		return pw
	}
	go func() {
		t := time.NewTimer(time.Until(start.Add(w.After)))
		defer t.Stop()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c, err := podwatch.New(*w)
		if err != nil {
			pw.setNote(err)
			return
		}
		defer c.Close()
		err = c.Wait(ctx, podwatch.Pod{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID})
		var gone *podwatch.Gone
		switch {
		case errors.As(err, &gone):
			cancel(gone)
		case ctx.Err() == nil && err != nil:
			pw.setNote(err)
		}
	}()
	return pw
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
