package k3s

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// API is a small client of the K3s API server, with the standard library only: the tier needs a
// handful of calls (create, get, delete, list, logs) and must time pods to the millisecond,
// which `kubectl` (2 s per call on this machine: the 250 MB multi-call binary starts each time)
// cannot. It authenticates with the admin client certificate from K3s's kubeconfig and dials
// from a socket made in the node netns, where the API server listens.
type API struct {
	base   string
	client *http.Client
}

// newAPI reads the kubeconfig K3s wrote (--write-kubeconfig) and connects through dial.
func newAPI(kubeconfig string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (*API, error) {
	f, err := os.Open(kubeconfig)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fields := map[string]string{}
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(s.Text()), ": ")
		if ok && fields[k] == "" {
			fields[k] = strings.TrimSpace(v)
		}
	}
	var pem [3][]byte
	for i, k := range []string{"certificate-authority-data", "client-certificate-data", "client-key-data"} {
		if pem[i], err = base64.StdEncoding.DecodeString(fields[k]); err != nil || len(pem[i]) == 0 {
			return nil, fmt.Errorf("kubeconfig %s: no usable %s (%v)", kubeconfig, k, err)
		}
	}
	cert, err := tls.X509KeyPair(pem[1], pem[2])
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem[0])
	tr := &http.Transport{
		DialContext:     dial,
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
		MaxIdleConns:    8,
	}
	return &API{base: strings.TrimSuffix(fields["server"], "/"), client: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}, nil
}

// StatusError is a non-2xx answer.
type StatusError struct {
	Code int
	Body string
}

func (e *StatusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.Code, e.Body) }

// IsNotFound reports a 404.
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// Do sends a request with an optional JSON body and decodes a JSON answer into out (unless nil
// or a *[]byte, which gets the raw body).
func (a *API) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		var b []byte
		switch v := body.(type) {
		case string:
			b = []byte(v)
		default:
			var err error
			if b, err = json.Marshal(v); err != nil {
				return err
			}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return &StatusError{Code: resp.StatusCode, Body: strings.TrimSpace(string(data))}
	}
	switch o := out.(type) {
	case nil:
		return nil
	case *[]byte:
		*o = data
		return nil
	default:
		return json.Unmarshal(data, out)
	}
}

// Pod is the part of a pod the tier reads.
type Pod struct {
	Metadata struct {
		Name              string `json:"name"`
		Namespace         string `json:"namespace"`
		UID               string `json:"uid"`
		DeletionTimestamp string `json:"deletionTimestamp"`
	} `json:"metadata"`
	Status struct {
		Phase             string            `json:"phase"`
		PodIP             string            `json:"podIP"`
		ContainerStatuses []containerStatus `json:"containerStatuses"`
		InitStatuses      []containerStatus `json:"initContainerStatuses"`
	} `json:"status"`
}

type containerStatus struct {
	Name  string `json:"name"`
	State struct {
		Running *struct {
			StartedAt time.Time `json:"startedAt"`
		} `json:"running"`
		Terminated *struct {
			StartedAt time.Time `json:"startedAt"`
			ExitCode  int       `json:"exitCode"`
		} `json:"terminated"`
		Waiting *struct {
			Reason string `json:"reason"`
		} `json:"waiting"`
	} `json:"state"`
}

// GetPod reads a pod.
func (a *API) GetPod(ctx context.Context, ns, name string) (*Pod, error) {
	var p Pod
	err := a.Do(ctx, "GET", "/api/v1/namespaces/"+ns+"/pods/"+name, nil, &p)
	return &p, err
}

// Event is the part of an event the tier reads.
type Event struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
	Count   int    `json:"count"`
}

// PodEvents lists the events of a pod.
func (a *API) PodEvents(ctx context.Context, ns, name string) ([]Event, error) {
	var list struct {
		Items []Event `json:"items"`
	}
	err := a.Do(ctx, "GET", "/api/v1/namespaces/"+ns+"/events?fieldSelector=involvedObject.name%3D"+name, nil, &list)
	return list.Items, err
}

// Logs returns a container's log.
func (a *API) Logs(ctx context.Context, ns, name, container string) (string, error) {
	var b []byte
	err := a.Do(ctx, "GET", "/api/v1/namespaces/"+ns+"/pods/"+name+"/log?container="+container, nil, &b)
	return string(b), err
}
