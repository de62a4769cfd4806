package main

import (
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/netready/netready/pkg/config"
	"github.com/netready/netready/pkg/gate"
)

// readyADD is the record of an ADD on a working network: six conditions,
// one probe from the config.
func readyADD(b *testing.B, p *plugin, logFile string) *record {
	b.Helper()
	r := p.newRecord("ADD", &skel.CmdArgs{ContainerID: "4cc7065c57341201ae50515d44bef3121777fabc935e29901267e636a544d4e2"})
	r.logFile = logFile
	r.pod = "default/web-0"
	r.outcome = "ready"
	r.spec = &config.Spec{Probes: []config.Probe{{URL: "tcp://198.51.100.10:5432", Origin: "config"}}}
	r.report = &gate.Report{Start: p.start.Add(time.Millisecond)}
	for _, n := range []string{"link eth0", "address 10.42.0.5 on eth0", "IPv4 default route", "gateway 10.42.0.1", "route to 198.51.100.10", "tcp://198.51.100.10:5432"} {
		r.report.Conditions = append(r.report.Conditions, gate.Status{Name: n, Ready: true, After: 300 * time.Microsecond, Attempts: 1})
	}
	return r
}

// BenchmarkLogWrite is what logging adds to every ADD: the record encoded
// and appended to logFile (with the rotation check), or written to stderr.
// internal/logfile's BenchmarkAppend compares the append with the plain
// os.OpenFile the plugin used before.
func BenchmarkLogWrite(b *testing.B) {
	b.Run("logFile", func(b *testing.B) {
		p := &plugin{start: time.Now(), stderr: io.Discard}
		r := readyADD(b, p, filepath.Join(b.TempDir(), "netready.log"))
		for b.Loop() {
			r.write()
		}
	})
	b.Run("stderr", func(b *testing.B) {
		p := &plugin{start: time.Now(), stderr: io.Discard}
		r := readyADD(b, p, "")
		for b.Loop() {
			r.write()
		}
	})
}
