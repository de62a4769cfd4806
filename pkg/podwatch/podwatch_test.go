package podwatch

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netready/netready/pkg/config"
)

// apiServer is a fake Kubernetes API server over TLS that demands a client
// certificate, as a real one does for the kubelet's credentials.
type apiServer struct {
	t    *testing.T
	srv  *httptest.Server
	conf config.PodWatch

	mu       sync.Mutex // guards the fields below
	pod      map[string]any
	getCode  int    // status of GETs, 200 by default
	getBody  string // body of a non-200 GET
	watchErr int    // status of watches, 200 by default
	slow     bool   // answer nothing until the test ends
	gets     int
	watches  []string // each watch's query
	events   chan string
}

func newAPIServer(t *testing.T) *apiServer {
	t.Helper()
	a := &apiServer{t: t, getCode: 200, watchErr: 200, events: make(chan string, 16),
		pod: map[string]any{"kind": "Pod", "metadata": map[string]any{
			"name": "web", "namespace": "default", "uid": "uid-1", "resourceVersion": "41"},
			"spec": map[string]any{"nodeName": "node-a"}}}
	done := make(chan struct{})
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != "system:node:node-a" {
			http.Error(w, "no client certificate", http.StatusUnauthorized)
			return
		}
		a.mu.Lock()
		slow := a.slow
		a.mu.Unlock()
		if slow {
			select {
			case <-done:
			case <-r.Context().Done():
			}
			return
		}
		switch {
		case r.URL.Path == "/api/v1/namespaces/default/pods/web" && r.URL.Query().Get("watch") == "":
			a.mu.Lock()
			a.gets++
			code, body := a.getCode, a.getBody
			b, _ := json.Marshal(a.pod)
			a.mu.Unlock()
			if code != 200 {
				w.WriteHeader(code)
				fmt.Fprint(w, body)
				return
			}
			w.Write(b)
		case r.URL.Path == "/api/v1/namespaces/default/pods" && r.URL.Query().Get("watch") == "true":
			a.mu.Lock()
			a.watches = append(a.watches, r.URL.RawQuery)
			code := a.watchErr
			a.mu.Unlock()
			if code != 200 {
				w.WriteHeader(code)
				fmt.Fprint(w, `{"kind":"Status","code":403,"reason":"Forbidden","message":"pods is forbidden: User \"system:node:node-a\" cannot watch resource \"pods\""}`)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			for {
				select {
				case ev := <-a.events:
					if ev == "close" {
						return
					}
					fmt.Fprintln(w, ev)
					w.(http.Flusher).Flush()
				case <-r.Context().Done():
					return
				case <-done:
					return
				}
			}
		default:
			http.NotFound(w, r)
		}
	}))
	dir := t.TempDir()
	clientCert, clientKey, clientCA := makeClientCert(t)
	pool := x509.NewCertPool()
	pool.AddCert(clientCA)
	a.srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	a.srv.StartTLS()
	t.Cleanup(func() { close(done); a.srv.Close() })

	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a.conf = config.PodWatch{
		Server:   a.srv.URL,
		CAFile:   write("server-ca.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.srv.Certificate().Raw})),
		CertFile: write("client-kubelet.crt", clientCert),
		KeyFile:  write("client-kubelet.key", clientKey),
		After:    time.Second,
	}
	return a
}

// makeClientCert returns a kubelet-like client certificate and key (PEM)
// and the certificate itself, which the server trusts as its own CA.
func makeClientCert(t *testing.T) (certPEM, keyPEM []byte, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "system:node:node-a", Organization: []string{"system:nodes"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ = x509.ParseCertificate(der)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), cert
}

func (a *apiServer) set(f func(a *apiServer)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(a)
}

func (a *apiServer) meta() map[string]any { return a.pod["metadata"].(map[string]any) }

var web = Pod{Namespace: "default", Name: "web", UID: "uid-1"}

// wait runs Wait in the background and returns its result channel.
func wait(t *testing.T, a *apiServer, ctx context.Context, pod Pod) <-chan error {
	t.Helper()
	c, err := New(a.conf)
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
		set  func(a *apiServer)
		pod  Pod
		seen Seen
		msg  []string
	}{
		{"404", func(a *apiServer) { a.getCode, a.getBody = 404, `{"kind":"Status","code":404}` }, web, NotFound,
			[]string{"pod default/web was deleted", "404 Not Found"}},
		{"new UID", func(a *apiServer) { a.meta()["uid"] = "uid-2" }, web, OtherUID,
			[]string{"pod default/web was deleted and re-created", "UID uid-2", "for UID uid-1"}},
		{"deletionTimestamp", func(a *apiServer) { a.meta()["deletionTimestamp"] = deleted }, web, Deleting,
			[]string{"pod default/web is being deleted", "deletionTimestamp 2026-11-30T22:10:01Z"}},
		{"deletionTimestamp, no UID from the runtime", func(a *apiServer) { a.meta()["deletionTimestamp"] = deleted }, Pod{Namespace: "default", Name: "web"}, Deleting, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAPIServer(t)
			a.set(tt.set)
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
			a := newAPIServer(t)
			ch := wait(t, a, context.Background(), web)
			// A change that leaves the pod wanted (its status) must not end the wait.
			a.events <- `{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"41"}}}`
			a.events <- `{"type":"MODIFIED","object":{"kind":"Pod","metadata":{"name":"web","uid":"uid-1","resourceVersion":"42"},"status":{"phase":"Pending"}}}`
			select {
			case err := <-ch:
				t.Fatalf("Wait returned %v on a change that leaves the pod wanted", err)
			case <-time.After(300 * time.Millisecond):
			}
			sent := time.Now()
			a.events <- tt.event
			gone(t, result(t, ch, 5*time.Second), tt.seen, "watch")
			// Pushed by the server, not polled: the answer follows the event at once.
			if d := time.Since(sent); d > time.Second {
				t.Errorf("Wait returned %v after the event, want at once", d)
			}
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.gets != 1 || len(a.watches) != 1 {
				t.Fatalf("%d GETs and %d watches, want one of each", a.gets, len(a.watches))
			}
			// The node authorizer allows a kubelet's watch only with its node in the selector.
			for _, want := range []string{"fieldSelector=metadata.name%3Dweb%2Cspec.nodeName%3Dnode-a", "resourceVersion=41", "watch=true"} {
				if !strings.Contains(a.watches[0], want) {
					t.Errorf("watch query %q lacks %q", a.watches[0], want)
				}
			}
		})
	}
}

func TestWatchRestartsAfterExpiredVersion(t *testing.T) {
	a := newAPIServer(t)
	ch := wait(t, a, context.Background(), web)
	a.events <- `{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old resource version: 41 (50)"}}`
	time.Sleep(200 * time.Millisecond)
	a.set(func(a *apiServer) { a.meta()["deletionTimestamp"] = "2026-11-30T22:10:01Z" })
	gone(t, result(t, ch, 5*time.Second), Deleting, "GET")
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.gets != 2 {
		t.Errorf("%d GETs, want 2 (the first, and one after the 410)", a.gets)
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
		set  func(a *apiServer)
		msg  string
	}{
		{"GET 403", func(a *apiServer) {
			a.getCode, a.getBody = 403, `{"kind":"Status","code":403,"message":"pods \"web\" is forbidden: User \"system:node:node-a\" cannot get resource \"pods\": no relationship found between node 'node-a' and this object"}`
		}, `GET /api/v1/namespaces/default/pods/web: 403 Forbidden: pods "web" is forbidden: User "system:node:node-a" cannot get resource "pods": no relationship found`},
		{"GET 500", func(a *apiServer) { a.getCode, a.getBody = 500, "etcdserver: request timed out" }, "500 Internal Server Error: etcdserver: request timed out"},
		{"watch 403", func(a *apiServer) { a.watchErr = 403 }, `watch /api/v1/namespaces/default/pods: 403 Forbidden: pods is forbidden`},
		{"unreachable", func(a *apiServer) { a.conf.Server = unreachable() }, "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAPIServer(t)
			a.set(tt.set)
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
	a := newAPIServer(t)
	a.set(func(a *apiServer) { a.slow = true })
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
	a := newAPIServer(t)
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
			w := a.conf
			tt.set(&w)
			if _, err := New(w); err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("New = %v, want an error containing %q", err, tt.msg)
			}
		})
	}
}
