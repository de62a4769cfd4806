package containerd

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// TestAgent: `netready agent`, as the DaemonSet runs it (a process here, not yet the image), on
// real containerd's conf and bin dirs: containerd, never restarted, loads the owned conflist and
// the next pod is gated; a rewrite of the primary chain is followed; /metrics shows the ADD just
// made; SIGTERM puts containerd back on the primary chain and the next pod is not gated.
func TestAgent(t *testing.T) {
	bed, r, nrDir := operatorBed(t)
	ctx := t.Context()

	logFile := filepath.Join(bed.Dir, "netready-agent.log")
	plugin := filepath.Join(bed.Dir, "netready.json")
	if err := os.WriteFile(plugin, []byte(`{"type":"netready","timeout":"20s","probes":["`+testbed.ProbeDB+`"],"logFile":"`+logFile+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var agentLog bytes.Buffer
	agent := exec.Command(filepath.Join(nrDir, testbed.Netready), "agent", "--cni-conf-dir", r.ConfDir,
		"--cni-bin-dir", bed.BinDir, "--config", plugin, "--log", logFile, "--metrics-addr", addr)
	agent.Stdout, agent.Stderr = &agentLog, &agentLog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()
	t.Cleanup(func() {
		agent.Process.Kill()
		<-exited
		os.Remove(filepath.Join(bed.BinDir, "netready"))
		t.Logf("agent log:\n%s", agentLog.String())
	})
	started := time.Now()
	picked := waitCNIConfig(ctx, t, r, true)
	t.Logf("containerd loaded the agent's conflist %v after the agent started", picked.Sub(started).Round(time.Millisecond))

	fault := runGated(ctx, t, bed, r)

	// K3s rewrites its chain at a restart: the owned file follows within a second.
	primary := filepath.Join(r.ConfDir, "10-flannel.conflist")
	old, err := os.ReadFile(primary)
	if err != nil {
		t.Fatal(err)
	}
	rewritten := bytes.Replace(old, []byte(`"cniVersion": "1.0.0"`), []byte(`"cniVersion": "0.4.0"`), 1)
	rewritten = bytes.Replace(rewritten, []byte(`"cniVersion":"1.0.0"`), []byte(`"cniVersion":"0.4.0"`), 1)
	if bytes.Equal(rewritten, old) {
		t.Fatalf("cannot rewrite the primary's cniVersion:\n%s", old)
	}
	if err := os.WriteFile(primary, rewritten, 0o644); err != nil {
		t.Fatal(err)
	}
	rewrote := time.Now()
	owned := filepath.Join(r.ConfDir, "00-netready.conflist")
	for {
		b, _ := os.ReadFile(owned)
		if bytes.Contains(b, []byte(`"0.4.0"`)) && bytes.Contains(b, []byte(`netready`)) {
			break
		}
		if time.Since(rewrote) > time.Second {
			t.Fatalf("the owned conflist did not follow the primary within 1s:\n%s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("owned conflist followed the rewritten primary in %v", time.Since(rewrote).Round(time.Millisecond))

	// The ADD just made is in /metrics (the agent tails the log every 0.5 s).
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		var body []byte
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if strings.Contains(string(body), `netready_adds_total{outcome="ready"} 1`) && strings.Contains(string(body), "netready_wait_seconds_count 1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics does not show the ADD within 5s:\n%s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The DaemonSet deleted: SIGTERM, and the node is back on the primary chain.
	if err := fault.Block(); err != nil {
		t.Fatal(err)
	}
	agent.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Errorf("agent exit after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop within 10s of SIGTERM")
	}
	stopped := time.Now()
	back := waitCNIConfig(ctx, t, r, false)
	t.Logf("containerd back on the primary chain %v after the agent stopped", back.Sub(stopped).Round(time.Millisecond))
	if b, _ := os.ReadFile(primary); !bytes.Equal(b, rewritten) {
		t.Error("the agent changed the primary conflist")
	}
	start := time.Now()
	plain, err := r.RunPod(ctx, PodConfig{Name: "plain"})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("after the agent stopped RunPodSandbox took %v with the path blocked: netready still gates", d)
	}
	if err := r.RemovePod(ctx, plain); err != nil {
		t.Error(err)
	}
	if _, err := fault.Unblock(); err != nil {
		t.Error(err)
	}
}
