package podwatch

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/podwatch/podwatchtest"
)

var web = Pod{Namespace: "default", Name: "web", UID: "uid-1"}

// wait runs Wait in the background and returns its result channel.
func wait(t *testing.T, a *podwatchtest.Server, ctx context.Context, pod Pod) <-chan error {
	t.Helper()
	c, err := New(a.Conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	out := make(chan error, 1)
	go func() { out <- c.Wait(ctx, pod) }()
	return out
}

func result(t *testing.T, ch <-chan error, within time.Duration) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(within):
		t.Fatalf("Wait did not return within %v", within)
		return nil
	}
}

func gone(t *testing.T, err error, seen Seen, via string, msg ...string) {
	t.Helper()
	var g *Gone
	if !errors.As(err, &g) {
		t.Fatalf("Wait = %v, want *Gone (%s)", err, seen)
	}
	if g.Seen != seen || g.Via != via {
		t.Errorf("Gone = %+v, want seen %q via %q", g, seen, via)
	}
	for _, m := range msg {
		if !strings.Contains(g.Error(), m) {
			t.Errorf("message %q lacks %q", g.Error(), m)
		}
	}
}

func TestGoneAtGET(t *testing.T) {
	deleted := time.Date(2026, 11, 30, 22, 10, 1, 0, time.UTC)
	tests := []struct {
		name string
		set  func(a *podwatchtest.Server)
		pod  Pod
		seen Seen
		msg  []string
	}{
		{"404", func(a *podwatchtest.Server) { a.AnswerGET(404, `{"kind":"Status","code":404}`) }, web, NotFound,
			[]string{"pod default/web was deleted", "404 Not Found"}},
		{"new UID", func(a *podwatchtest.Server) { a.SetPodMeta("uid", "uid-2") }, web, OtherUID,
			[]string{"pod default/web was deleted and re-created", "UID uid-2", "for UID uid-1"}},
		{"deletionTimestamp", func(a *podwatchtest.Server) { a.SetPodMeta("deletionTimestamp", deleted) }, web, Deleting,
			[]string{"pod default/web is being deleted", "deletionTimestamp 2026-11-30T22:10:01Z"}},
		{"deletionTimestamp, no UID from the runtime", func(a *podwatchtest.Server) { a.SetPodMeta("deletionTimestamp", deleted) }, Pod{Namespace: "default", Name: "web"}, Deleting, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := podwatchtest.New(t)
			tt.set(a)
			gone(t, result(t, wait(t, a, context.Background(), tt.pod), 5*time.Second), tt.seen, "GET", tt.msg...)
		})
	}
}

func TestGoneByWatch(t *testing.T) {
	tests := []struct {
		name  string
		event string
		seen  Seen
	}{
		{"deletionTimestamp", `{"type":"MODIFIED","object":{"kind":"Pod","metadata":{"name":"web","uid":"uid-1","resourceVersion":"42","deletionTimestamp":"2026-11-30T22:10:01Z"}}}`, Deleting},
		{"deleted", `{"type":"DELETED","object":{"kind":"Pod","metadata":{"name":"web","uid":"uid-1","resourceVersion":"43"}}}`, NotFound},
		{"deleted, another UID", `{"type":"DELETED","object":{"kind":"Pod","metadata":{"name":"web","uid":"uid-9","resourceVersion":"43"}}}`, OtherUID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := podwatchtest.New(t)
			ch := wait(t, a, context.Background(), web)
			// A change that leaves the pod wanted (its status) must not end the wait.
			a.Events <- `{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"41"}}}`
			a.Events <- `{"type":"MODIFIED","object":{"kind":"Pod","metadata":{"name":"web","uid":"uid-1","resourceVersion":"42"},"status":{"phase":"Pending"}}}`
			select {
			case err := <-ch:
				t.Fatalf("Wait returned %v on a change that leaves the pod wanted", err)
			case <-time.After(300 * time.Millisecond):
			}
			sent := time.Now()
			a.Events <- tt.event
			gone(t, result(t, ch, 5*time.Second), tt.seen, "watch")
			// Pushed by the server, not polled: the answer follows the event at once.
			if d := time.Since(sent); d > time.Second {
				t.Errorf("Wait returned %v after the event, want at once", d)
			}
			gets, watches := a.Requests()
			if gets != 1 || len(watches) != 1 {
				t.Fatalf("%d GETs and %d watches, want one of each", gets, len(watches))
			}
			// The node authorizer allows a kubelet's watch only with its node in the selector.
			for _, want := range []string{"fieldSelector=metadata.name%3Dweb%2Cspec.nodeName%3Dnode-a", "resourceVersion=41", "watch=true"} {
				if !strings.Contains(watches[0], want) {
					t.Errorf("watch query %q lacks %q", watches[0], want)
				}
			}
		})
	}
}

func TestWatchRestartsAfterExpiredVersion(t *testing.T) {
	a := podwatchtest.New(t)
	ch := wait(t, a, context.Background(), web)
	a.Events <- `{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old resource version: 41 (50)"}}`
	time.Sleep(200 * time.Millisecond)
	a.SetPodMeta("deletionTimestamp", "2026-11-30T22:10:01Z")
	gone(t, result(t, ch, 5*time.Second), Deleting, "GET")
	if gets, _ := a.Requests(); gets != 2 {
		t.Errorf("%d GETs, want 2 (the first, and one after the 410)", gets)
	}
}

// TestCannotTell: what keeps the API server from answering is an error that
// is not *Gone, returned promptly; the caller keeps waiting without the watch.
func TestCannotTell(t *testing.T) {
	unreachable := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close() // nothing listens there now: connection refused
		return "https://" + addr
	}
	tests := []struct {
		name string
		set  func(a *podwatchtest.Server)
		msg  string
	}{
		{"GET 403", func(a *podwatchtest.Server) {
			a.AnswerGET(403, `{"kind":"Status","code":403,"message":"pods \"web\" is forbidden: User \"system:node:node-a\" cannot get resource \"pods\": no relationship found between node 'node-a' and this object"}`)
		}, `GET /api/v1/namespaces/default/pods/web: 403 Forbidden: pods "web" is forbidden: User "system:node:node-a" cannot get resource "pods": no relationship found`},
		{"GET 500", func(a *podwatchtest.Server) { a.AnswerGET(500, "etcdserver: request timed out") }, "500 Internal Server Error: etcdserver: request timed out"},
		{"mirror of a static pod", func(a *podwatchtest.Server) {
			a.SetPodMeta("uid", "uid-of-the-mirror")
			a.SetPodMeta("annotations", map[string]string{"kubernetes.io/config.mirror": "uid-1"})
		}, "pod default/web is the mirror of a static pod (kubernetes.io/config.mirror: uid-1)"},
		{"watch 403", func(a *podwatchtest.Server) { a.ForbidWatch() }, `watch /api/v1/namespaces/default/pods: 403 Forbidden: pods is forbidden`},
		{"unreachable", func(a *podwatchtest.Server) { a.Conf.Server = unreachable() }, "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := podwatchtest.New(t)
			tt.set(a)
			err := result(t, wait(t, a, context.Background(), web), 5*time.Second)
			var g *Gone
			if err == nil || errors.As(err, &g) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Wait = %v, want an error (not Gone) containing %q", err, tt.msg)
			}
		})
	}
}

// TestSlowServer: a server that accepts and never answers holds Wait until
// ctx ends, no longer: the ADD's own end is what stops it.
func TestSlowServer(t *testing.T) {
	a := podwatchtest.New(t)
	a.Slow()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := result(t, wait(t, a, ctx, web), 5*time.Second)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait = %v, want the context's deadline", err)
	}
	if d := time.Since(start); d < 1400*time.Millisecond || d > 2500*time.Millisecond {
		t.Errorf("Wait returned after %v, want at the context's end (1.5 s)", d)
	}
}

func TestNewBadFiles(t *testing.T) {
	a := podwatchtest.New(t)
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "x")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	tests := []struct {
		name string
		set  func(w *config.PodWatch)
		msg  string
	}{
		{"CA missing", func(w *config.PodWatch) { w.CAFile = filepath.Join(dir, "none.crt") }, "podWatch.caFile: open"},
		{"CA not PEM", func(w *config.PodWatch) { w.CAFile = notPEM }, "podWatch.caFile " + notPEM + " holds no PEM certificate"},
		{"key missing", func(w *config.PodWatch) { w.KeyFile = filepath.Join(dir, "none.key") }, "podWatch.certFile/keyFile: open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := a.Conf
			tt.set(&w)
			if _, err := New(w); err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("New = %v, want an error containing %q", err, tt.msg)
			}
		})
	}
}
