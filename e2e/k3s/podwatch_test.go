package k3s

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/internal/logrec"
)

// TestPodWatchForbidden: podWatch holding the kubelet certificate of another node, which the
// node authorizer answers with a real 403 for this node's pods. The watch cannot tell, so the
// ADD that waits behind a closed path is neither failed nor shortened by it: it runs to its
// timeout, with the usual code, and its line notes the 403 once.
func TestPodWatchForbidden(t *testing.T) {
	n := need(t)
	ctx := t.Context()
	const ns = "e2e-forbidden"
	if err := n.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	const timeout = 6 * time.Second
	install(t, n, timeout.String(), testbed.ProbeDB)
	checkDefaultPodWatch(t, n.CNIConfDir(), n.DataDir, "https://127.0.0.1:6443")
	cert, key := otherNodeCert(t, n, "nr-ghost-node")
	setPodWatchCredentials(t, n, cert, key)

	fault, err := n.Bed.BlockRouter(context.Background()) // not t.Context(): canceled before Cleanup lifts the fault
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fault.Unblock() })
	p := PodSpec{Namespace: ns, Name: "forbidden"}
	if err := n.Apply(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.DeletePod(context.Background(), ns, p.Name, true) })

	var line *logLine
	for deadline := time.Now().Add(timeout + time.Minute); line == nil; time.Sleep(200 * time.Millisecond) {
		if l := addLines(t, n, ns+"/"+p.Name); len(l) > 0 {
			line = &l[0]
		} else if time.Now().After(deadline) {
			t.Fatalf("no ADD line for %s/%s within %v: %s", ns, p.Name, timeout+time.Minute, n.describe(ctx, ns, p.Name))
		}
	}
	t.Logf("the ADD: %s after %.0f ms, code %d; notes %q", line.Outcome, line.TotalMS, line.Code, line.Notes)
	if line.Outcome != logrec.Timeout || line.Code != 11 {
		t.Errorf("the ADD ended %s with code %d, want %s with code 11: a 403 must not change how it ends", line.Outcome, line.Code, logrec.Timeout)
	}
	if line.TotalMS < float64((timeout - 100*time.Millisecond).Milliseconds()) {
		t.Errorf("the ADD ended after %.0f ms, before its timeout %v", line.TotalMS, timeout)
	}
	var forbidden int
	for _, note := range line.Notes {
		if strings.Contains(note, "podWatch") && strings.Contains(note, "403") {
			forbidden++
		}
	}
	if forbidden != 1 {
		t.Errorf("the ADD's notes %q: want one podWatch note naming the 403", line.Notes)
	}
}

// otherNodeCert makes a kubelet client certificate for node name, signed by K3s's client CA
// (what the node authorizer reads: CN system:node:NAME, O system:nodes), and its key, under a
// test dir.
func otherNodeCert(t *testing.T, n *Node, name string) (certFile, keyFile string) {
	t.Helper()
	tls := filepath.Join(n.DataDir, "server", "tls")
	caCert, caKey := readCA(t, filepath.Join(tls, "client-ca.crt"), filepath.Join(tls, "client-ca.key"))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "client-"+name+".crt"), filepath.Join(dir, "client-"+name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// readCA reads a CA's certificate and private key (PKCS#8 or EC, as K3s writes them).
func readCA(t *testing.T, certPath, keyPath string) (*x509.Certificate, any) {
	t.Helper()
	block := func(path string) []byte {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(raw)
		if b == nil {
			t.Fatalf("%s: no PEM block", path)
		}
		return b.Bytes
	}
	cert, err := x509.ParseCertificate(block(certPath))
	if err != nil {
		t.Fatalf("%s: %v", certPath, err)
	}
	der := block(keyPath)
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		var ecErr error
		if key, ecErr = x509.ParseECPrivateKey(der); ecErr != nil {
			t.Fatalf("%s: %v", keyPath, errors.Join(err, ecErr))
		}
	}
	return cert, key
}

// setPodWatchCredentials points the installed netready's podWatch at certFile and keyFile
// (the rest as install wrote it), and waits until containerd has loaded that chain.
func setPodWatchCredentials(t *testing.T, n *Node, certFile, keyFile string) {
	t.Helper()
	path := filepath.Join(n.CNIConfDir(), OwnedConflist)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var list map[string]any
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	plugins, _ := list["plugins"].([]any)
	if len(plugins) == 0 {
		t.Fatalf("%s has no plugins", path)
	}
	last, _ := plugins[len(plugins)-1].(map[string]any)
	pw, _ := last["podWatch"].(map[string]any)
	if last["type"] != "netready" || pw == nil {
		t.Fatalf("%s: the last plugin is %v, with podWatch %v; want netready with podWatch", path, last["type"], pw)
	}
	pw["certFile"], pw["keyFile"] = certFile, keyFile
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".nr-test"
	if err := os.WriteFile(tmp, out, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		info, err := n.Crictl(t.Context(), "info")
		if err == nil && strings.Contains(info, certFile) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not load the chain with podWatch.certFile %s within 30 s (err %v)", certFile, err)
		}
	}
}
