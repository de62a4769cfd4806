// Package podwatchtest is a fake Kubernetes API server for tests of
// podwatch and its callers: TLS, a client certificate demanded as a real
// API server demands the kubelet's, one pod, GET and watch.
package podwatchtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/netready/netready/pkg/config"
)

// Server serves the pod default/web (UID uid-1, resourceVersion 41, on
// node-a) to clients with the certificate of system:node:node-a. Conf
// reaches it with that certificate.
type Server struct {
	Conf config.PodWatch
	// Events are sent, one per line, to the open watch; "close" ends it.
	Events chan string

	srv  *httptest.Server
	done chan struct{}

	mu       sync.Mutex // guards the fields below
	pod      map[string]any
	getCode  int    // status of GETs, 200 by default
	getBody  string // body of a non-200 GET
	watchErr int    // status of watches, 200 by default
	slow     bool   // answer nothing until the test ends
	gets     int
	watches  []string // each watch's query
}

// New starts a Server on a loopback port, closed when the test ends.
func New(t testing.TB) *Server { t.Helper(); return NewOn(t, nil) }

// NewOn starts a Server on l (nil: a loopback port of its own), e.g. a
// listener made in a test's network namespace, where the plugin runs.
func NewOn(t testing.TB, l net.Listener) *Server {
	t.Helper()
	a := &Server{getCode: 200, watchErr: 200, Events: make(chan string, 16), done: make(chan struct{}),
		pod: map[string]any{"kind": "Pod", "metadata": map[string]any{
			"name": "web", "namespace": "default", "uid": "uid-1", "resourceVersion": "41"},
			"spec": map[string]any{"nodeName": "node-a"}}}
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(a.serve))
	if l != nil {
		a.srv.Listener.Close()
		a.srv.Listener = l
	}
	clientCert, clientKey, clientCA := makeClientCert(t)
	pool := x509.NewCertPool()
	pool.AddCert(clientCA)
	a.srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	a.srv.StartTLS()
	t.Cleanup(func() { close(a.done); a.srv.Close() })

	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a.Conf = config.PodWatch{
		Server:   a.srv.URL,
		CAFile:   write("server-ca.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.srv.Certificate().Raw})),
		CertFile: write("client-kubelet.crt", clientCert),
		KeyFile:  write("client-kubelet.key", clientKey),
		After:    time.Second,
	}
	return a
}

func (a *Server) serve(w http.ResponseWriter, r *http.Request) {
	if len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != "system:node:node-a" {
		http.Error(w, "no client certificate", http.StatusUnauthorized)
		return
	}
	a.mu.Lock()
	slow := a.slow
	a.mu.Unlock()
	if slow {
		select {
		case <-a.done:
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
			case ev := <-a.Events:
				if ev == "close" {
					return
				}
				fmt.Fprintln(w, ev)
				w.(http.Flusher).Flush()
			case <-r.Context().Done():
				return
			case <-a.done:
				return
			}
		}
	default:
		http.NotFound(w, r)
	}
}

// makeClientCert returns a kubelet-like client certificate and key (PEM)
// and the certificate itself, which the server trusts as its own CA.
func makeClientCert(t testing.TB) (certPEM, keyPEM []byte, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "system:node:node-a", Organization: []string{"system:nodes"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
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

// SetPodMeta sets a metadata field of the pod the GET returns ("uid",
// "deletionTimestamp", ...).
func (a *Server) SetPodMeta(key string, v any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pod["metadata"].(map[string]any)[key] = v
}

// AnswerGET makes GETs answer code with body.
func (a *Server) AnswerGET(code int, body string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.getCode, a.getBody = code, body
}

// ForbidWatch makes watches answer 403.
func (a *Server) ForbidWatch() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.watchErr = http.StatusForbidden
}

// Slow makes the server accept requests and never answer.
func (a *Server) Slow() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.slow = true
}

// Requests returns how many GETs it served and each watch's query.
func (a *Server) Requests() (gets int, watches []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.gets, append([]string(nil), a.watches...)
}
