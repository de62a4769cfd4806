package main

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/podwatch"
	"github.com/netready/netready/pkg/podwatch/podwatchtest"
)

// runWatch is the gate's side of podWatch without a netns: a gate that
// never becomes ready, stopped by its deadline or by the watch. It returns
// the context's cause, when the gate ended (from start) and the watcher.
func runWatch(t *testing.T, w *config.PodWatch, pod config.Pod, budget time.Duration) (cause error, ended time.Duration, pw *podWatcher) {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(budget))
	defer cancel()
	ctx, end := context.WithCancelCause(ctx)
	defer end(nil)
	pw = newPodWatcher(w, pod, start)
	stop := pw.End(ctx, end)
	<-ctx.Done()
	ended = time.Since(start)
	stop()
	return context.Cause(ctx), ended, pw
}

// closedPort is an https URL of a loopback port this test listened on and
// closed: nothing answers there.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "https://" + l.Addr().String()
}

var webPod = config.Pod{Namespace: "default", Name: "web", UID: "uid-1"}

// TestWatchPodEndsTheWait: the API server's word that the pod is gone ends
// the wait at once, once the wait has lasted podWatch.after.
func TestWatchPodEndsTheWait(t *testing.T) {
	for _, tt := range []struct {
		name string
		set  func(a *podwatchtest.Server)
		seen podwatch.Seen
	}{
		{"404", func(a *podwatchtest.Server) { a.AnswerGET(404, `{"kind":"Status","code":404}`) }, podwatch.NotFound},
		{"new UID", func(a *podwatchtest.Server) { a.SetPodMeta("uid", "uid-2") }, podwatch.OtherUID},
		{"deletionTimestamp", func(a *podwatchtest.Server) { a.SetPodMeta("deletionTimestamp", "2026-11-30T22:10:01Z") }, podwatch.Deleting},
		{"watch event", func(a *podwatchtest.Server) {
			go func() {
				time.Sleep(time.Second)
				a.Events <- `{"type":"MODIFIED","object":{"metadata":{"name":"web","uid":"uid-1","deletionTimestamp":"2026-11-30T22:10:01Z"}}}`
			}()
		}, podwatch.Deleting},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := podwatchtest.New(t)
			a.Conf.After = 300 * time.Millisecond
			tt.set(a)
			cause, ended, pw := runWatch(t, &a.Conf, webPod, 10*time.Second)
			var g *podwatch.Gone
			if !errors.As(cause, &g) || g.Seen != tt.seen {
				t.Fatalf("the wait ended with %v after %v, want *Gone (%s)", cause, ended, tt.seen)
			}
			if ended < a.Conf.After || ended > 3*time.Second {
				t.Errorf("the wait ended after %v, want soon after podWatch.after %v (and the event)", ended, a.Conf.After)
			}
			if pw.Note() != "" {
				t.Errorf("note %q, want none", pw.Note())
			}
		})
	}
}

// TestWatchPodNeverHurts: when the API server cannot tell, the wait runs to
// its own deadline exactly as without podWatch, and the reason is noted once.
func TestWatchPodNeverHurts(t *testing.T) {
	const budget = 2 * time.Second
	for _, tt := range []struct {
		name string
		set  func(a *podwatchtest.Server)
		note string // "" = none expected
	}{
		{"403", func(a *podwatchtest.Server) {
			a.AnswerGET(403, `{"kind":"Status","code":403,"message":"pods \"web\" is forbidden: User \"system:node:node-a\" cannot get resource \"pods\""}`)
		}, `podWatch: cannot tell whether the pod was deleted, waited on without it: GET /api/v1/namespaces/default/pods/web: 403 Forbidden: pods "web" is forbidden`},
		{"unreachable", func(a *podwatchtest.Server) { a.Conf.Server = closedPort(t) }, "connection refused"},
		{"credentials missing", func(a *podwatchtest.Server) { a.Conf.CertFile = filepath.Join(t.TempDir(), "client-kubelet.crt") }, "podWatch.certFile/keyFile: open"},
		{"slow", func(a *podwatchtest.Server) { a.Slow() }, ""},
		{"pod wanted, nothing happens", func(a *podwatchtest.Server) {}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := podwatchtest.New(t)
			a.Conf.After = 200 * time.Millisecond
			tt.set(a)
			cause, ended, pw := runWatch(t, &a.Conf, webPod, budget)
			if !errors.Is(cause, context.DeadlineExceeded) {
				t.Errorf("the wait ended with %v, want its own deadline", cause)
			}
			if ended < budget || ended > budget+200*time.Millisecond {
				t.Errorf("the wait ended after %v, want at its deadline %v", ended, budget)
			}
			if got := pw.Note(); tt.note == "" && got != "" || !strings.Contains(got, tt.note) {
				t.Errorf("note %q, want one containing %q", got, tt.note)
			}
		})
	}
}

// TestWatchPodQuietWhenQuick: a pod ready before podWatch.after (the ready
// path), a pod outside Kubernetes, a static pod and a config without
// podWatch never contact the API server.
func TestWatchPodQuietWhenQuick(t *testing.T) {
	a := podwatchtest.New(t)
	a.Conf.After = 300 * time.Millisecond
	for _, tt := range []struct {
		name   string
		w      *config.PodWatch
		pod    config.Pod
		budget time.Duration
	}{
		{"ready before after", &a.Conf, webPod, 100 * time.Millisecond},
		{"no pod names", &a.Conf, config.Pod{}, 600 * time.Millisecond},
		{"no podWatch", nil, webPod, 600 * time.Millisecond},
		{"static pod", &a.Conf, config.Pod{Namespace: "default", Name: "web", UID: "uid-1",
			Annotations: map[string]string{"kubernetes.io/config.source": "file"}}, 600 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			runWatch(t, tt.w, tt.pod, tt.budget)
		})
	}
	time.Sleep(500 * time.Millisecond) // past after for the first case
	if gets, watches := a.Requests(); gets != 0 || len(watches) != 0 {
		t.Errorf("the API server got %d GETs and %d watches, want none", gets, len(watches))
	}
}
