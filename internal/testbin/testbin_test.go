package testbin

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestRun(t *testing.T) {
	sh := "/bin/sh"
	for _, c := range []struct {
		name    string
		script  string
		env     map[string]string
		stdin   string
		timeout time.Duration
		exit    int
		stdout  string
		wantErr string
	}{
		{name: "exit code and stdin", script: "cat; exit 3", stdin: "in", exit: 3, stdout: "in"},
		{name: "exactly the env given, empty values left out", script: `echo "$CNI_COMMAND/${CNI_NETNS-unset}/${HOME-unset}"`,
			env: map[string]string{"CNI_COMMAND": "ADD", "CNI_NETNS": ""}, stdout: "ADD/unset/unset\n"},
		{name: "killed at the timeout", script: "sleep 5", timeout: 100 * time.Millisecond, wantErr: "did not end within 100ms"},
		{name: "killed by a signal", script: "kill -KILL $$", wantErr: "signal: killed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := t.TempDir() + "/plugin"
			if err := os.WriteFile(f, []byte("#!"+sh+"\n"+c.script+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			r, err := Run(t.Context(), Call{Binary: f, Env: c.env, Stdin: []byte(c.stdin), Timeout: c.timeout})
			switch {
			case c.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case r.Exit != c.exit || string(r.Stdout) != c.stdout:
				t.Errorf("exit %d stdout %q, want %d %q", r.Exit, r.Stdout, c.exit, c.stdout)
			}
		})
	}
}
