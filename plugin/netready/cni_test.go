package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseNeedsPrevResult(t *testing.T) {
	_, _, err := parse([]byte(`{"cniVersion":"1.0.0","name":"cbr0","type":"netready"}`))
	e, ok := err.(*types.Error)
	if !ok || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, "must be chained after") {
		t.Fatalf("err=%v, want code 7 saying netready must be chained", err)
	}
}

func TestCLIUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		out  string
	}{
		{nil, exitUsage, "netready check --netns"},
		{[]string{"help"}, exitReady, "netready check --netns"},
		{[]string{"--version"}, exitReady, "netready dev (CNI 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)"},
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"check"}, exitUsage, "--netns and --conf are required"},
		// A file that cannot be read is the machine's trouble, not usage.
		{[]string{"check", "--netns", "/x", "--conf", "/nonexistent/conf"}, exitCannot, "no such file"},
		{[]string{"explain", "--conf", "/nonexistent/conf"}, exitCannot, "no such file"},
		{[]string{"install", "--root", "/nonexistent/root", "--dry-run"}, exitFailed, "--root /nonexistent/root is not a directory"},
		{[]string{"uninstall", "--root", "/nonexistent/root", "--dry-run"}, exitFailed, "--root /nonexistent/root is not a directory"},
		{[]string{"install", "--root", "/", "--restart"}, exitUsage, "cannot be combined with --root"},
		{[]string{"stats", "--log", "/nonexistent/netready.log"}, exitCannot, "no such file"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out bytes.Buffer
			if code := runCLI(tc.args, &out, &out); code != tc.code || !strings.Contains(out.String(), tc.out) {
				t.Errorf("exit %d, output %q; want exit %d containing %q", code, out.String(), tc.code, tc.out)
			}
		})
	}
}
