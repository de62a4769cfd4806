package main_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netready/netready/internal/logrec"

	"github.com/netready/netready/internal/testbin"
	"github.com/netready/netready/internal/testns"
)

// TestLogLines runs the built binary as a runtime would and reads the log it leaves: every
// failed ADD leaves exactly one line with the error the runtime got (config errors included,
// when the config names a logFile at all), DEL one line, STATUS and GC a line only when they
// fail, and when logFile is unusable the line goes to stderr with one line saying why.
func TestLogLines(t *testing.T) {
	bin := testbin.Netready(t)
	var runner string // as root, rows run in a netns of their own, never in the root netns
	if os.Geteuid() == 0 {
		_, runner = testns.New(t, "loglines")
	}
	dir := t.TempDir()
	noNetns := filepath.Join(dir, "no-such-netns")
	blocker := filepath.Join(dir, "a-file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	type row struct {
		name    string
		verb    string            // default ADD
		env     map[string]string // overrides
		stdin   func(logFile string) []byte
		lines   int  // records expected in the log file
		stderr  bool // the record goes to stderr instead (logFile unknown or unusable)
		outcome logrec.Outcome
		code    uint   // expected in the record and on stdout; 0: the verb succeeds; 0xff: any error
		secret  string // an annotation value the record shows as <redacted>
	}
	with := func(mod func(c map[string]any)) func(string) []byte {
		return func(logFile string) []byte {
			return conf(func(c map[string]any) {
				c["logFile"] = logFile
				if mod != nil {
					mod(c)
				}
			})
		}
	}
	v11 := func(mod func(c map[string]any)) func(string) []byte {
		return with(func(c map[string]any) {
			c["cniVersion"] = "1.1.0"
			if mod != nil {
				mod(c)
			}
		})
	}
	rows := []row{
		{name: "ADD unknown field", stdin: with(func(c map[string]any) { c["probe"] = "icmp://10.0.0.1" }), lines: 1, outcome: logrec.Error, code: 7},
		{name: "ADD invalid timeout", stdin: with(func(c map[string]any) { c["timeout"] = "forever" }), lines: 1, outcome: logrec.Error, code: 7},
		{name: "ADD not chained", stdin: with(func(c map[string]any) { c["prevResult"] = nil }), lines: 1, outcome: logrec.Error, code: 7},
		{name: "ADD prevResult interface out of range", stdin: with(func(c map[string]any) {
			c["prevResult"] = prevResult(noNetns, func(p map[string]any) {
				p["ips"] = []any{map[string]any{"address": "10.42.0.5/24", "interface": 9}}
			})
		}), lines: 1, outcome: logrec.Error, code: 7},
		{name: "ADD invalid annotation", stdin: with(func(c map[string]any) {
			c["runtimeConfig"] = map[string]any{"io.kubernetes.cri.pod-annotations": map[string]string{"netready.dev/timeout": "soon"}}
		}), lines: 1, outcome: logrec.Error, code: 7, secret: "soon"},
		{name: "ADD CNI_ARGS malformed", env: map[string]string{"CNI_ARGS": "junk"}, stdin: with(nil), lines: 1, outcome: logrec.Error, code: 4},
		{name: "ADD netns missing", stdin: with(nil), lines: 1, outcome: logrec.Error, code: 0xff /* any */},
		{name: "ADD logFile relative", stdin: with(func(c map[string]any) { c["logFile"] = "netready.log" }), stderr: true, outcome: logrec.Error, code: 7},
		{name: "ADD logFile unusable", stdin: with(func(c map[string]any) { c["logFile"] = filepath.Join(blocker, "netready.log") }),
			stderr: true, outcome: logrec.Error, code: 0xff},
		{name: "DEL", verb: "DEL", stdin: with(nil), lines: 1, outcome: logrec.OK},
		{name: "DEL invalid config", verb: "DEL", stdin: with(func(c map[string]any) { c["timeout"] = "forever" }), lines: 1, outcome: logrec.OK},
		{name: "STATUS", verb: "STATUS", stdin: v11(nil), lines: 0},
		{name: "STATUS invalid config", verb: "STATUS", stdin: v11(func(c map[string]any) { c["timout"] = "5s" }), lines: 1, outcome: logrec.Error, code: 7},
		{name: "GC", verb: "GC", stdin: v11(nil), lines: 0},
		{name: "ADD garbage", stdin: func(logFile string) []byte { return []byte(`{"logFile":"` + logFile + `", garbage`) }, lines: 0, code: 0xff},
	}
	for _, tc := range rows {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logFile := filepath.Join(t.TempDir(), "log", "netready.log")
			env := map[string]string{
				"CNI_COMMAND":     "ADD",
				"CNI_CONTAINERID": "0123456789abcdef0123456789abcdef",
				"CNI_NETNS":       noNetns,
				"CNI_IFNAME":      "eth0",
				"CNI_PATH":        "/opt/cni/bin",
				"CNI_ARGS":        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
			}
			if tc.verb != "" {
				env["CNI_COMMAND"] = tc.verb
			}
			for k, v := range tc.env {
				env[k] = v
			}
			r, err := testbin.Run(t.Context(), testbin.Call{Binary: bin, Env: env, Stdin: tc.stdin(logFile), NetNS: runner})
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(r.Stderr, []byte("panic")) || bytes.Contains(r.Stderr, []byte("goroutine ")) {
				t.Fatalf("stderr holds a panic: %s", r.Stderr)
			}
			var cniErr struct {
				Code uint   `json:"code"`
				Msg  string `json:"msg"`
			}
			if tc.code == 0 {
				if r.Exit != 0 {
					t.Fatalf("exit %d, stdout %s; want success", r.Exit, r.Stdout)
				}
			} else if r.Exit == 0 || json.Unmarshal(r.Stdout, &cniErr) != nil || (tc.code != 0xff && cniErr.Code != tc.code) {
				t.Fatalf("exit %d, stdout %s; want a CNI error with code %d", r.Exit, r.Stdout, tc.code)
			}

			recs, err := logrec.ReadFile(logFile)
			if errors.Is(err, os.ErrNotExist) {
				err = nil
			}
			if err != nil || len(recs) != tc.lines {
				t.Fatalf("the log holds %d records (%v), want %d: %+v", len(recs), err, tc.lines, recs)
			}
			if tc.stderr {
				// The record, then possibly one WARN line saying why the file was not used.
				lines := strings.Split(strings.TrimSpace(string(r.Stderr)), "\n")
				rec, err := logrec.Parse([]byte(lines[0]))
				if err != nil {
					t.Fatalf("stderr's first line is no record: %v: %s", err, r.Stderr)
				}
				recs = []logrec.Record{rec}
				if len(lines) > 2 || (len(lines) == 2 && !strings.Contains(lines[1], `"level":"WARN"`)) {
					t.Errorf("stderr has more than the record and one warning: %s", r.Stderr)
				}
			} else if len(r.Stderr) != 0 {
				t.Errorf("stderr: %s; want nothing (the log went to the file)", r.Stderr)
			}
			if len(recs) == 0 {
				return
			}
			rec := recs[0]
			if rec.Verb != env["CNI_COMMAND"] || rec.Outcome != tc.outcome {
				t.Errorf("record verb %q outcome %q, want %q %q", rec.Verb, rec.Outcome, env["CNI_COMMAND"], tc.outcome)
			}
			if tc.code == 0 {
				if rec.Code != 0 || rec.Error != "" || rec.Level != logrec.LevelInfo {
					t.Errorf("record of a success: level %s code %d error %q", rec.Level, rec.Code, rec.Error)
				}
				return
			}
			want := cniErr.Msg
			if tc.secret != "" {
				want = strings.ReplaceAll(want, `"`+tc.secret+`"`, `"<redacted>"`)
			}
			if rec.Level != logrec.LevelError || rec.Code != cniErr.Code || rec.Error != want {
				t.Errorf("record: level %s code %d error %q; want ERROR and what the runtime got: code %d %q",
					rec.Level, rec.Code, rec.Error, cniErr.Code, want)
			}
		})
	}
}
