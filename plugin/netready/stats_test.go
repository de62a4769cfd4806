package main

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/internal/logfile"
	"github.com/netready/netready/internal/logrec"
)

func TestCLIStats(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "netready.log")
	lf := logfile.File{Path: logPath, MaxBytes: 600, Keep: 10}
	now := time.Now()
	for i := range 6 {
		line, _ := logrec.Record{Time: now.Add(time.Duration(i-6) * time.Hour), Level: "INFO", Msg: "netready ADD",
			Verb: "ADD", Outcome: logrec.Ready, Pod: fmt.Sprintf("ns%d/p", i), TotalMS: 2500}.Marshal()
		lf.Append(line)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"all generations", []string{"--log", logPath}, exitReady, "ABOVE 2s: half the pods waited more than 2s (p50 2.5s over 6 ADDs)"},
		{"since", []string{"--log", logPath, "--since", "150m"}, exitReady, "over 2 ADDs"},
		{"missing log", []string{"--log", filepath.Join(dir, "none")}, exitCannot, "pass it with --log"},
		{"bad flag", []string{"--since", "soon"}, exitUsage, "invalid value"},
		{"negative", []string{"--since", "-1h"}, exitUsage, "not negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			code := cliStats(tc.args, &out, &out, now)
			if code != tc.code || !strings.Contains(out.String(), tc.want) {
				t.Errorf("exit %d, output:\n%s\nwant exit %d and %q", code, out.String(), tc.code, tc.want)
			}
		})
	}
}
