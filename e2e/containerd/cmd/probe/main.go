// Command probe is the probe image's entrypoint: it connects to a TCP target the instant the
// container starts and reports, as one JSON document, every attempt and when the first one
// succeeded.
//
//	probe app  [flags]  the application: connect at once; after a failure retry every -retry
//	probe init [flags]  the init container's wait loop: `until connect; do sleep 1; done`
//
// Both print one line per attempt to stdout (crictl logs) and write the report
// (internal/report) to -report, in a host-mounted dir, renamed into place so that a reader never
// sees half of it. Each attempt is a fresh socket with its own -timeout (default 1 s, as
// `nc -z -w1`); a timeout below the kernel's 1 s SYN retransmission (the tests give the app
// 500 ms) makes an attempt whose SYN was dropped fail every time instead of racing the
// retransmission. The exit code is 0 once connected, 1 at -deadline.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/netready/netready/e2e/containerd/internal/report"
)

func main() {
	started := time.Now()
	if len(os.Args) < 2 || (os.Args[1] != "app" && os.Args[1] != "init") {
		fmt.Fprintln(os.Stderr, "usage: probe app|init [-target IP:PORT] [-timeout D] [-retry D] [-deadline D] [-report FILE]")
		os.Exit(2)
	}
	role := os.Args[1]
	fs := flag.NewFlagSet(role, flag.ExitOnError)
	target := fs.String("target", "198.51.100.10:5432", "TCP address to connect to")
	timeout := fs.Duration("timeout", time.Second, "timeout of one connect attempt")
	retry := fs.Duration("retry", time.Second, "pause after a failed attempt (init: the loop's `sleep 1`)")
	deadline := fs.Duration("deadline", time.Minute, "give up after this long")
	reportFile := fs.String("report", "", "write the JSON report to this file")
	fs.Parse(os.Args[2:])

	r := report.Report{Role: role, Target: *target, StartedNS: started.UnixNano()}
	end := started.Add(*deadline)
	for {
		a := report.Attempt{StartNS: time.Now().UnixNano()}
		c, err := net.DialTimeout("tcp", *target, *timeout)
		a.EndNS = time.Now().UnixNano()
		if err == nil {
			c.Close()
			r.Connected, r.ConnectedNS = true, a.EndNS
		} else {
			a.Error = err.Error()
		}
		r.Attempts = append(r.Attempts, a)
		fmt.Printf("%s attempt %d: %.1f ms after start: %s\n", role, len(r.Attempts),
			float64(a.EndNS-r.StartedNS)/1e6, orOK(a.Error))
		if r.Connected || time.Now().Add(*retry).After(end) {
			break
		}
		time.Sleep(*retry)
	}
	if *reportFile != "" {
		if err := report.Write(*reportFile, &r); err != nil {
			fmt.Fprintln(os.Stderr, "probe:", err)
			os.Exit(3)
		}
	}
	if !r.Connected {
		os.Exit(1)
	}
}

func orOK(err string) string {
	if err == "" {
		return "connected"
	}
	return err
}
