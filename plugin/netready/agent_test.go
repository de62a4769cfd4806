package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/netready/netready/internal/logfile"
	"github.com/netready/netready/internal/logrec"
	"github.com/netready/netready/pkg/install"
)

// TestCLIAgent runs `netready agent` as the DaemonSet does, in temp dirs: it installs the binary,
// writes the owned conflist, serves metrics of a log written by the real writer (including
// lines added while it runs), and on SIGTERM removes its own file and nothing else.
func TestCLIAgent(t *testing.T) {
	root := t.TempDir()
	confDir, binDir := filepath.Join(root, "net.d"), filepath.Join(root, "bin")
	for _, d := range []string{confDir, binDir} {
		os.MkdirAll(d, 0o755)
	}
	for _, p := range []string{"flannel", "portmap", "bandwidth"} {
		os.WriteFile(filepath.Join(binDir, p), []byte("#!/bin/sh\n"), 0o755)
	}
	primary := filepath.Join(confDir, install.PrimaryName)
	os.WriteFile(primary, install.K3sChain, 0o644)
	plugin := filepath.Join(root, "netready.json")
	os.WriteFile(plugin, []byte(`{"type":"netready","probes":["tcp://10.15.21.167:5432"]}`), 0o644)
	logPath := filepath.Join(root, "log", "netready.log")
	lf := logfile.File{Path: logPath}
	writeADD := func(pod string, outcome logrec.Outcome, ms float64) {
		line, _ := logrec.Record{Time: time.Now(), Level: "INFO", Msg: "netready ADD", Verb: "ADD",
			Outcome: outcome, Pod: pod, TotalMS: ms}.Marshal()
		if _, err := lf.Append(line); err != nil {
			t.Fatal(err)
		}
	}
	writeADD("shop/a", logrec.Ready, 4.2)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- cliAgent([]string{"--cni-conf-dir", confDir, "--cni-bin-dir", binDir, "--config", plugin,
			"--log", logPath, "--metrics-addr", addr}, io.Discard, &syncWriter{w: &stderr})
	}()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			syscall.Kill(os.Getpid(), syscall.SIGTERM)
			<-done
		}
	})
	owned := filepath.Join(confDir, install.OwnedName)
	waitFor(t, "owned conflist", func() bool { _, err := os.Stat(owned); return err == nil })
	if _, err := os.Stat(filepath.Join(binDir, "netready")); err != nil {
		t.Errorf("binary not installed: %v", err)
	}
	writeADD("shop/b", logrec.Timeout, 30000) // written while the agent runs
	waitFor(t, "metrics of both ADDs", func() bool {
		body := get(t, "http://"+addr+"/metrics")
		return strings.Contains(body, `netready_adds_total{outcome="ready"} 1`) &&
			strings.Contains(body, `netready_adds_total{outcome="timeout"} 1`) &&
			strings.Contains(body, `netready_timeouts_total{on_timeout="fail"} 1`) &&
			strings.Contains(body, "netready_wait_seconds_count 2")
	})

	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		stopped = true
		if code != exitReady {
			t.Errorf("exit %d after SIGTERM; log:\n%s", code, stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("agent did not stop within 5s of SIGTERM")
	}
	if _, err := os.Stat(owned); err == nil {
		t.Error("the owned conflist survived SIGTERM")
	}
	if b, _ := os.ReadFile(primary); !bytes.Equal(b, install.K3sChain) {
		t.Error("the primary conflist changed")
	}
	for _, want := range []string{"binary installed", "owned conflist written", "owned conflist removed"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("agent log lacks %q:\n%s", want, stderr.String())
		}
	}
}

// TestCLIAgentUsage: 2 for what the operator wrote wrong, 3 for a machine
// the agent cannot run on as told.
func TestCLIAgentUsage(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"type":"netready","probe":[]}`), 0o644)
	good := filepath.Join(dir, "good.json")
	os.WriteFile(good, []byte(`{"type":"netready"}`), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no config", []string{}, exitUsage, "--config FILE is required"},
		{"typo in config", []string{"--config", bad, "--cni-conf-dir", dir, "--cni-bin-dir", dir}, exitUsage, "probe"},
		{"typo in config and missing dir", []string{"--config", bad, "--cni-conf-dir", filepath.Join(dir, "x")}, exitUsage, "invalid"},
		{"unreadable config", []string{"--config", filepath.Join(dir, "none.json")}, exitCannot, "cannot read the config"},
		{"missing dir", []string{"--config", good, "--cni-conf-dir", filepath.Join(dir, "x"), "--cni-bin-dir", dir}, exitCannot, "is not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := cliAgent(tc.args, io.Discard, &stderr); code != tc.code || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr.String(), tc.code, tc.want)
			}
		})
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// syncWriter lets the test read what the agent's goroutines write.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// TestNoHeavyInit guards what every ADD pays: the agent is a mode of this binary, so nothing
// linked for it may bring package initialisers that run at each exec. client_golang (with
// protobuf and procfs) did: 4x the init allocations, exec p50 +9 ms here (README, "Watch it").
func TestNoHeavyInit(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list unavailable: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/prometheus/", "google.golang.org/protobuf/", "github.com/google/go-containerregistry/", "helm.sh/", "k8s.io/"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("the plugin binary links %s: its initialisers would run at every ADD", dep)
			}
		}
	}
}
