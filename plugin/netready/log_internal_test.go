package main

import (
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/netready/netready/internal/logrec"
)

// TestPanicLeavesItsLine: a verb that panics (a bug) still leaves its line,
// as an error naming the panic, and the panic goes on.
func TestPanicLeavesItsLine(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "netready.log")
	p := &plugin{start: time.Now(), stderr: io.Discard}
	var recovered any
	func() {
		defer func() { recovered = recover() }()
		rec := p.newRecord("ADD", &skel.CmdArgs{ContainerID: "c1"})
		rec.logFile = logFile
		defer rec.write()
		var m map[string]int
		m["boom"]++ // a nil map: panics
	}()
	if recovered == nil {
		t.Fatal("the panic was swallowed; it must go on")
	}
	recs, err := logrec.ReadFile(logFile)
	if err != nil || len(recs) != 1 {
		t.Fatalf("log: %v, %v; want one record", recs, err)
	}
	r := recs[0]
	if r.Outcome != logrec.Error || r.Level != logrec.LevelError || !strings.Contains(r.Error, "panicked") || !strings.Contains(r.Error, "nil map") {
		t.Errorf("record %+v; want outcome error naming the panic", r)
	}
}
