// Command app is the app image's entrypoint: it connects to a TCP target the instant it starts
// and prints one JSON line (its report) to stdout, which the tier reads with `kubectl logs`.
//
//	app [flags]          the application: connect at once; after a failure retry every -retry
//	app -init [flags]    an init container's wait loop: `until nc -z -w1 DB PORT; do sleep 1; done`
//	app -sleep           then stay up (so that the pod stays Running) until SIGTERM
//	app -listen ADDR     a server instead: accept TCP connections on ADDR until SIGTERM, closing
//	                     each at once and printing {"role":"listen","peer":...} for it
//
// Each attempt is a fresh socket with its own -timeout. The app's timeout (500 ms) is below the
// kernel's 1 s SYN retransmission, so an attempt whose SYN was dropped fails instead of racing
// the retransmission. Exit code 0 once connected, 1 at -deadline.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Report is the line the app prints. Times are Unix nanoseconds on the node's clock.
type Report struct {
	Role        string `json:"role"` // app or init
	Target      string `json:"target"`
	StartedNS   int64  `json:"started_ns"`
	ConnectedNS int64  `json:"connected_ns,omitempty"` // end of the first successful connect
	FirstFailed bool   `json:"first_failed"`
	FirstError  string `json:"first_error,omitempty"`
	Attempts    int    `json:"attempts"`
}

func main() {
	started := time.Now()
	target := flag.String("target", "198.51.100.10:5432", "TCP address to connect to")
	timeout := flag.Duration("timeout", 500*time.Millisecond, "timeout of one connect attempt")
	retry := flag.Duration("retry", 500*time.Millisecond, "pause after a failed attempt")
	deadline := flag.Duration("deadline", 2*time.Minute, "give up after this long")
	initLoop := flag.Bool("init", false, "be the init container's loop (sets -timeout 1s -retry 1s)")
	sleep := flag.Bool("sleep", false, "after connecting, stay up until SIGTERM")
	listen := flag.String("listen", "", "accept connections on this address instead (until SIGTERM)")
	flag.Parse()
	if *listen != "" {
		serve(*listen)
		return
	}
	if *initLoop {
		*timeout, *retry = time.Second, time.Second
	}
	r := Report{Role: "app", Target: *target, StartedNS: started.UnixNano()}
	if *initLoop {
		r.Role = "init"
	}
	end := started.Add(*deadline)
	for {
		c, err := net.DialTimeout("tcp", *target, *timeout)
		r.Attempts++
		if err == nil {
			c.Close()
			r.ConnectedNS = time.Now().UnixNano()
			break
		}
		if r.Attempts == 1 {
			r.FirstFailed, r.FirstError = true, err.Error()
		}
		if time.Now().Add(*retry).After(end) {
			break
		}
		time.Sleep(*retry)
	}
	line, _ := json.Marshal(r)
	fmt.Println(string(line))
	if r.ConnectedNS == 0 {
		os.Exit(1)
	}
	if *sleep {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
	}
}

// serve accepts on addr and reports each peer, so that a test sees the address a connection
// came from (a pod's own IP across the overlay, or a node's after SNAT).
func serve(addr string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		os.Exit(0)
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			continue
		}
		line, _ := json.Marshal(map[string]any{"role": "listen", "peer": c.RemoteAddr().String(), "at_ns": time.Now().UnixNano()})
		c.Close()
		fmt.Println(string(line))
	}
}
