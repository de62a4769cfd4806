// Package podwatch asks the Kubernetes API server whether the pod an ADD
// waits for is still wanted, so that a pod deleted meanwhile does not wait
// out netready's timeout: neither the kubelet nor containerd stops an ADD in
// progress (measured on K3s v1.35, e2e/k3s TestDeleteWhileWaiting).
//
// It uses the standard library only (no client-go: every ADD execs the
// plugin, and client-go's package initialisers would run at each one). One
// GET of the pod, then one watch of it (an idle connection on which the API
// server pushes the change), with the node's own credentials: the node
// authorizer lets a kubelet get a pod bound to its node and watch pods with
// a spec.nodeName=<its node> field selector.
package podwatch

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/netready/netready/pkg/config"
)

// Pod is the pod whose sandbox the ADD sets up, as CNI_ARGS names it.
type Pod struct {
	Namespace, Name string
	UID             string // "" when the runtime did not pass K8S_POD_UID: then only 404 and deletionTimestamp count
}

func (p Pod) String() string { return p.Namespace + "/" + p.Name }

// Seen is what the API server said that makes the pod gone.
type Seen string

const (
	NotFound Seen = "not found" // GET answered 404, or the watch said DELETED
	OtherUID Seen = "other UID" // the name belongs to a pod re-created with another UID
	Deleting Seen = "deleting"  // the pod has a deletionTimestamp: the kubelet is tearing it down
)

// Gone is the API server's word that the pod is no longer wanted: waiting
// longer for its network helps no one.
type Gone struct {
	Pod     Pod
	Seen    Seen
	UID     string    // OtherUID: the UID the API server has under that name
	Deleted time.Time // Deleting: the pod's deletionTimestamp
	Via     string    // "GET" or "watch"
}

func (g *Gone) Error() string {
	switch g.Seen {
	case OtherUID:
		return fmt.Sprintf("pod %s was deleted and re-created: the API server's has UID %s, this sandbox is for UID %s (%s)", g.Pod, g.UID, g.Pod.UID, g.Via)
	case Deleting:
		return fmt.Sprintf("pod %s is being deleted: deletionTimestamp %s (%s)", g.Pod, g.Deleted.UTC().Format(time.RFC3339), g.Via)
	}
	if g.Via == "watch" {
		return fmt.Sprintf("pod %s was deleted: the API server's watch said DELETED", g.Pod)
	}
	return fmt.Sprintf("pod %s was deleted: the API server answered 404 Not Found", g.Pod)
}

// object is what netready reads of a Pod (or of the Status in a watch's
// ERROR event).
type object struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name              string            `json:"name"`
		Namespace         string            `json:"namespace"`
		UID               string            `json:"uid"`
		ResourceVersion   string            `json:"resourceVersion"`
		Annotations       map[string]string `json:"annotations"`
		DeletionTimestamp *time.Time        `json:"deletionTimestamp"`
	} `json:"metadata"`
	Spec struct {
		NodeName string `json:"nodeName"`
	} `json:"spec"`
	// A Status (kind "Status") carries these.
	Code    int    `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// judge decides from one version of the pod whether it is still the one
// the sandbox is for: nil while it is.
func judge(want Pod, obj object, via string) *Gone {
	switch {
	case want.UID != "" && obj.Metadata.UID != "" && obj.Metadata.UID != want.UID:
		return &Gone{Pod: want, Seen: OtherUID, UID: obj.Metadata.UID, Via: via}
	case obj.Metadata.DeletionTimestamp != nil:
		return &Gone{Pod: want, Seen: Deleting, Deleted: *obj.Metadata.DeletionTimestamp, Via: via}
	}
	return nil
}

// event is one line of a watch.
type event struct {
	Type   string `json:"type"`
	Object object `json:"object"`
}

// mirrorAnnotation marks the API object the kubelet makes for a static pod.
const mirrorAnnotation = "kubernetes.io/config.mirror"

// Named timeouts, each short enough that a broken API server costs nothing
// visible (the ADD never waits for the watch) and long enough for a loaded one.
const (
	// dialTimeout bounds the TCP connect and TLS handshake.
	dialTimeout = 5 * time.Second
	// requestTimeout bounds the GET, and the watch's wait for its headers.
	requestTimeout = 10 * time.Second
	// restartGap spaces the watch's restarts (410 Gone, a dropped
	// connection): at most one request a second per waiting ADD.
	restartGap = time.Second
	// maxRestarts bounds them: a watch that keeps breaking is given up.
	maxRestarts = 3
	// maxBody bounds what is read of a GET's answer: a pod is a few KB.
	maxBody = 4 << 20
)

// Client asks one API server, with one client certificate.
type Client struct {
	base *url.URL
	http *http.Client
}

// New reads the credentials w names. An error says which file is unusable
// and why; the caller logs it and keeps waiting without the watch.
func New(w config.PodWatch) (*Client, error) {
	base, err := url.Parse(w.Server)
	if err != nil {
		return nil, fmt.Errorf("podWatch.server %q: %v", w.Server, err)
	}
	caPEM, err := os.ReadFile(w.CAFile)
	if err != nil {
		return nil, fmt.Errorf("podWatch.caFile: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("podWatch.caFile %s holds no PEM certificate", w.CAFile)
	}
	cert, err := tls.LoadX509KeyPair(w.CertFile, w.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("podWatch.certFile/keyFile: %v", err)
	}
	dialer := &net.Dialer{Timeout: dialTimeout}
	tr := &http.Transport{
		Proxy:                 nil, // the API server is the node's own: a runtime's HTTP_PROXY must not carry the node's certificate elsewhere
		DialContext:           dialer.DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   dialTimeout,
		ResponseHeaderTimeout: requestTimeout,
		MaxIdleConnsPerHost:   1,
	}
	return &Client{base: base, http: &http.Client{Transport: tr}}, nil
}

// Close drops the client's connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Wait returns a *Gone as soon as the API server says the pod is gone. It
// returns ctx's error when ctx ends first (the ADD is done), and any other
// error when it cannot tell: the server unreachable, slow, refusing the
// credentials (403), or the watch breaking more than maxRestarts times. The
// caller then keeps waiting as if there were no watch.
func (c *Client) Wait(ctx context.Context, pod Pod) error {
	for restarts := 0; ; restarts++ {
		obj, err := c.get(ctx, pod)
		if err != nil {
			return err
		}
		if h := obj.Metadata.Annotations[mirrorAnnotation]; h != "" {
			// A static pod's API object is a mirror the kubelet re-creates at will: its UID is
			// not the pod's, and its deletion does not delete the pod.
			return fmt.Errorf("pod %s is the mirror of a static pod (%s: %s), which says nothing of the pod's life", pod, mirrorAnnotation, h)
		}
		if g := judge(pod, obj, "GET"); g != nil {
			return g
		}
		err = c.watch(ctx, pod, obj)
		var g *Gone
		var se *StatusError
		switch {
		case errors.As(err, &g), errors.As(err, &se), ctx.Err() != nil:
			return err // asking again would get the same answer
		case restarts == maxRestarts:
			return fmt.Errorf("the watch of pod %s broke %d times, last: %w", pod, restarts+1, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(restartGap):
		}
	}
}

// get reads the pod: a *Gone for 404.
func (c *Client) get(parent context.Context, pod Pod) (object, error) {
	ctx, cancel := context.WithTimeout(parent, requestTimeout)
	defer cancel()
	u := c.url("api/v1/namespaces", pod.Namespace, "pods", pod.Name)
	resp, err := c.do(ctx, u)
	switch {
	case parent.Err() != nil:
		return object{}, parent.Err()
	case errors.Is(err, context.DeadlineExceeded):
		return object{}, fmt.Errorf("GET %s%s: no answer within %v", c.base.Host, u.Path, requestTimeout)
	case err != nil:
		return object{}, err
	}
	defer resp.Body.Close()
	var obj object
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return object{}, &Gone{Pod: pod, Seen: NotFound, Via: "GET"}
	case resp.StatusCode != http.StatusOK:
		return object{}, statusError("GET", u, resp)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&obj); err != nil {
		return object{}, fmt.Errorf("GET %s: the answer is not a pod: %v", u.Path, err)
	}
	return obj, nil
}

// watch follows the pod from the version get read until it is gone (a
// *Gone), ctx ends, or the watch ends (another error: restart it).
func (c *Client) watch(ctx context.Context, pod Pod, got object) error {
	q := url.Values{}
	// spec.nodeName=<node> is what lets the node authorizer allow a
	// kubelet's watch; metadata.name narrows it to this pod.
	sel := "metadata.name=" + pod.Name
	if got.Spec.NodeName != "" {
		sel += ",spec.nodeName=" + got.Spec.NodeName
	}
	q.Set("fieldSelector", sel)
	q.Set("watch", "true")
	q.Set("resourceVersion", got.Metadata.ResourceVersion)
	q.Set("allowWatchBookmarks", "true")
	if dl, ok := ctx.Deadline(); ok {
		// The server ends the watch when the ADD would be done anyway.
		q.Set("timeoutSeconds", fmt.Sprint(int(time.Until(dl)/time.Second)+1))
	}
	u := c.url("api/v1/namespaces", pod.Namespace, "pods")
	u.RawQuery = q.Encode()
	resp, err := c.do(ctx, u)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return statusError("watch", u, resp)
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var ev event
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("the watch of pod %s ended: %v", pod, err)
		}
		switch ev.Type {
		case "DELETED":
			if pod.UID == "" || ev.Object.Metadata.UID == "" || ev.Object.Metadata.UID == pod.UID {
				return &Gone{Pod: pod, Seen: NotFound, Via: "watch"}
			}
			// Another pod of that name went: ours went before it.
			return &Gone{Pod: pod, Seen: OtherUID, UID: ev.Object.Metadata.UID, Via: "watch"}
		case "ADDED", "MODIFIED":
			if g := judge(pod, ev.Object, "watch"); g != nil {
				return g
			}
		case "ERROR":
			// 410 Gone: the version read is too old; a new GET starts over.
			return fmt.Errorf("the watch of pod %s said %d %s: %s", pod, ev.Object.Code, ev.Object.Reason, ev.Object.Message)
		}
	}
}

// url is the API path under the server's URL (which may have a path of its own).
func (c *Client) url(elem ...string) *url.URL {
	u := c.base.JoinPath(elem...)
	if !strings.HasPrefix(u.Path, "/") {
		u.Path = "/" + u.Path
	}
	return u
}

func (c *Client) do(ctx context.Context, u *url.URL) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "netready")
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is said once, below
		}
		return nil, fmt.Errorf("%s %s: %v", c.base.Host, u.Path, err)
	}
	return resp, nil
}

// StatusError is an answer other than 200 (or 404 to the GET).
type StatusError struct {
	What   string // "GET" or "watch"
	Path   string
	Status string // "403 Forbidden"
	Msg    string // the API server's message: a 403 names the user and what the authorizer wanted
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: %s: %s", e.What, e.Path, e.Status, e.Msg)
}

func statusError(what string, u *url.URL, resp *http.Response) error {
	var st object
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &st) == nil && st.Message != "" {
		msg = st.Message
	}
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return &StatusError{What: what, Path: u.Path, Status: resp.Status, Msg: msg}
}
