package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/pkg/install"
)

const plugin = `{"type":"netready","capabilities":{"io.kubernetes.cri.pod-annotations":true},"timeout":"30s","probes":["tcp://10.15.21.167:5432"]}`

func chain(name string, types ...string) []byte {
	var ps []map[string]any
	for _, t := range types {
		ps = append(ps, map[string]any{"type": t})
	}
	b, _ := json.Marshal(map[string]any{"name": name, "cniVersion": "1.0.0", "plugins": ps})
	return b
}

// node is a fake node: a conf dir with K3s's primary and a bin dir with K3s's plugins (empty
// executables: the writer checks each type has one, as containerd would).
type node struct {
	conf, bin string
	log       *bytes.Buffer
}

func newNode(t *testing.T) node {
	t.Helper()
	root := t.TempDir()
	n := node{conf: filepath.Join(root, "net.d"), bin: filepath.Join(root, "bin"), log: &bytes.Buffer{}}
	for _, d := range []string{n.conf, n.bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"flannel", "portmap", "bandwidth", "netready", "calico"} {
		if err := os.WriteFile(filepath.Join(n.bin, p), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	n.write(t, install.PrimaryName, install.K3sChain)
	return n
}

func (n node) write(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(n.conf, name), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (n node) read(name string) []byte {
	b, err := os.ReadFile(filepath.Join(n.conf, name))
	if err != nil {
		return nil
	}
	return b
}

func (n node) agent(t *testing.T) *Agent {
	t.Helper()
	a, err := New(n.conf, n.bin, []byte(plugin), slog.New(slog.NewJSONHandler(n.log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	a.BinaryGrace = 10 * time.Millisecond
	return a
}

func wantOwned(t *testing.T, n node, primary []byte) {
	t.Helper()
	want, err := install.BuildOwned(primary, []byte(plugin))
	if err != nil {
		t.Fatal(err)
	}
	if got := n.read(install.OwnedName); !bytes.Equal(got, want) {
		t.Fatalf("owned conflist:\n%s\nwant:\n%s", got, want)
	}
}

func TestReconcile(t *testing.T) {
	n := newNode(t)
	a := n.agent(t)
	if err := a.Reconcile(); err != nil {
		t.Fatal(err)
	}
	wantOwned(t, n, install.K3sChain)
	if path, ok, why := install.FirstChainHasNetready(n.conf); !ok {
		t.Fatalf("containerd's first conflist %s does not chain netready: %s", path, why)
	}
	if !bytes.Equal(n.read(install.PrimaryName), install.K3sChain) {
		t.Error("the primary file was changed")
	}
	// Nothing changed: no write, no log line.
	n.log.Reset()
	fi1, _ := os.Stat(filepath.Join(n.conf, install.OwnedName))
	if err := a.Reconcile(); err != nil {
		t.Fatal(err)
	}
	fi2, _ := os.Stat(filepath.Join(n.conf, install.OwnedName))
	if !os.SameFile(fi1, fi2) || n.log.Len() != 0 {
		t.Errorf("a steady node was rewritten or logged: %s", n.log)
	}
}

func TestDecideRefusals(t *testing.T) {
	k3s := install.K3sChain
	for _, tc := range []struct {
		name string
		dir  Dir
		want string
	}{
		{"primary holds netready", Dir{Names: []string{"10-flannel.conflist"}, Primary: "10-flannel.conflist",
			PrimaryData: chain("cbr0", "flannel", "netready")}, "already chains netready"},
		{"cilium exclusive", Dir{Names: []string{"05-cilium.conflist"}, Others: []string{"10-flannel.conflist.cilium_bak"},
			Primary: "05-cilium.conflist", PrimaryData: chain("cilium", "cilium-cni")}, "exclusive mode"},
		{"a file before ours", Dir{Names: []string{"00-multus.conf", "00-netready.conflist", "10-flannel.conflist"},
			Primary: "00-multus.conf", PrimaryData: []byte(`{"type":"multus"}`), Owned: []byte("{}")}, "00-multus.conf sorts before"},
		{"primary not a chain", Dir{Names: []string{"10-x.conf"}, Primary: "10-x.conf", PrimaryData: []byte(`{"name":"x","cniVersion":"1.0.0","type":"bridge"}`)},
			"plugins"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			act := Decide(tc.dir, []byte(plugin))
			if act.Err == nil || !strings.Contains(act.Err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", act.Err, tc.want)
			}
			if act.Write != nil {
				t.Error("a refusal writes")
			}
			if act.Remove != (tc.dir.Owned != nil) {
				t.Errorf("remove = %v with owned %q: a refusal removes our own file, and only when it is there", act.Remove, tc.dir.Owned)
			}
		})
	}
	t.Run("no primary", func(t *testing.T) {
		act := Decide(Dir{}, []byte(plugin))
		if act.Err != nil || act.Write != nil || act.Remove || !strings.Contains(act.State, "waiting") {
			t.Errorf("%+v", act)
		}
	})
	t.Run("ours only, primary gone", func(t *testing.T) {
		act := Decide(Dir{Names: []string{install.OwnedName}, Owned: k3s}, []byte(plugin))
		if act.Err != nil || act.Write != nil || act.Remove {
			t.Errorf("the primary vanished: keep the last good chain, got %+v", act)
		}
	})
}

// TestRefusalOnNode: on disk, a primary that chains netready leaves no owned file behind, even
// one an earlier, valid state wrote; the error goes to the log once.
func TestRefusalOnNode(t *testing.T) {
	n := newNode(t)
	a := n.agent(t)
	if err := a.Reconcile(); err != nil {
		t.Fatal(err)
	}
	n.write(t, install.PrimaryName, chain("cbr0", "flannel", "portmap", "netready"))
	for range 2 {
		if err := a.Reconcile(); err == nil {
			t.Fatal("a primary chaining netready was accepted")
		}
	}
	if n.read(install.OwnedName) != nil {
		t.Error("the owned file survived a refusal")
	}
	if c := strings.Count(n.log.String(), "already chains netready"); c != 1 {
		t.Errorf("the refusal was logged %d times, want once:\n%s", c, n.log)
	}
}

// TestRunFollows: the agent running as in the DaemonSet follows K3s rewriting its chain and
// someone deleting the owned file, each within a second, and on stop removes its own file only.
func TestRunFollows(t *testing.T) {
	n := newNode(t)
	n.write(t, "99-other.conflist", chain("other", "calico"))
	a := n.agent(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, Interval) }()
	t.Cleanup(func() { cancel(); <-done })

	within := func(what string, ok func() bool) {
		t.Helper()
		start := time.Now()
		for !ok() {
			if time.Since(start) > time.Second {
				t.Fatalf("%s: not done within 1s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Logf("%s: %v", what, time.Since(start).Round(time.Millisecond))
	}
	ownedIs := func(primary []byte) func() bool {
		want, _ := install.BuildOwned(primary, []byte(plugin))
		return func() bool { return bytes.Equal(n.read(install.OwnedName), want) }
	}
	within("first write", ownedIs(install.K3sChain))

	rewritten := chain("cbr0", "flannel", "portmap") // K3s drops bandwidth, say
	n.write(t, install.PrimaryName, rewritten)
	within("primary rewritten", ownedIs(rewritten))

	os.Remove(filepath.Join(n.conf, install.OwnedName))
	within("owned deleted", ownedIs(rewritten))

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil // for the cleanup
	if n.read(install.OwnedName) != nil {
		t.Error("the owned file is still there after stop")
	}
	if !bytes.Equal(n.read(install.PrimaryName), rewritten) || n.read("99-other.conflist") == nil {
		t.Error("stop touched a file that is not the agent's")
	}
	entries, _ := os.ReadDir(n.conf)
	if len(entries) != 2 {
		t.Errorf("conf dir after stop: %v, want the primary and the other file only", entries)
	}
	if _, err := os.Stat(filepath.Join(n.bin, "netready")); err == nil {
		t.Error("stop left the binary although no conf file chains netready: the node is not as it was")
	}
	for _, p := range []string{"flannel", "portmap", "bandwidth", "calico"} {
		if _, err := os.Stat(filepath.Join(n.bin, p)); err != nil {
			t.Errorf("stop touched another plugin's binary: %v", err)
		}
	}
}

// The binary stays while any conf file still chains netready: a hand-made chain, or
// `netready install` in flannel-cni-conf mode on another dir's file.
func TestStopKeepsBinaryWhileChained(t *testing.T) {
	n := newNode(t)
	n.write(t, "99-hand.conflist", chain("hand", "flannel", "netready"))
	a := n.agent(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := a.Run(ctx, Interval); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(n.bin, "netready")); err != nil {
		t.Errorf("stop removed the binary that 99-hand.conflist still chains: %v", err)
	}
}

func TestInstallBinary(t *testing.T) {
	n := newNode(t)
	os.Remove(filepath.Join(n.bin, "netready"))
	src := filepath.Join(t.TempDir(), "netready")
	os.WriteFile(src, []byte("the binary"), 0o755)
	a := n.agent(t)
	for range 2 {
		if err := a.InstallBinary(src); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(filepath.Join(n.bin, "netready"))
	if err != nil || string(got) != "the binary" {
		t.Fatalf("installed %q, %v", got, err)
	}
	if fi, _ := os.Stat(filepath.Join(n.bin, "netready")); fi.Mode().Perm()&0o111 == 0 {
		t.Error("not executable")
	}
	if !strings.Contains(n.log.String(), "binary already in place") {
		t.Errorf("the second run rewrote the binary:\n%s", n.log)
	}
}

func TestNewRejects(t *testing.T) {
	n := newNode(t)
	for _, tc := range []struct{ name, plugin, conf, want string }{
		{"typo", `{"type":"netready","probe":["tcp://10.0.0.1:1"]}`, n.conf, "probe"},
		{"not netready", `{"type":"bridge"}`, n.conf, `want "netready"`},
		{"no conf dir", plugin, filepath.Join(n.conf, "nope"), "not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.conf, n.bin, []byte(tc.plugin), slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// A rolling update with surge, or a second agent: the one that stops last must not take the node
// out of the chain while another still keeps it, and the last one standing removes the file.
func TestStopLeavesAnotherAgentsFile(t *testing.T) {
	n := newNode(t)
	owned := filepath.Join(n.conf, install.OwnedName)
	run := func(a *Agent) (stop func() error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx, 20*time.Millisecond) }()
		return func() error { cancel(); return <-done }
	}
	old := n.agent(t)
	stopOld := run(old)
	waitFile := func(what string, ok func(os.FileInfo, error) bool) os.FileInfo {
		t.Helper()
		for start := time.Now(); ; time.Sleep(5 * time.Millisecond) {
			fi, err := os.Stat(owned)
			if ok(fi, err) {
				return fi
			}
			if time.Since(start) > 2*time.Second {
				t.Fatalf("%s: not within 2s (stat: %v)", what, err)
			}
		}
	}
	first := waitFile("old agent's first write", func(_ os.FileInfo, err error) bool { return err == nil })

	// The new agent finds the file in step and still writes it once: from now on it is its.
	newer := n.agent(t)
	stopNew := run(newer)
	waitFile("new agent takes over", func(fi os.FileInfo, err error) bool { return err == nil && !os.SameFile(fi, first) })
	if err := stopOld(); err != nil {
		t.Fatal(err)
	}
	wantOwned(t, n, install.K3sChain)
	if _, err := os.Stat(filepath.Join(n.bin, "netready")); err != nil {
		t.Errorf("the old agent removed the binary the remaining agent's chain needs: %v", err)
	}
	if !strings.Contains(n.log.String(), "left in place") {
		t.Errorf("the old agent did not say why it left the file:\n%s", n.log)
	}
	// The new agent keeps it steady (no fight: it does not rewrite a file it wrote) and removes
	// it when it stops.
	fi := waitFile("steady", func(fi os.FileInfo, err error) bool { return err == nil })
	time.Sleep(100 * time.Millisecond)
	if fi2, err := os.Stat(owned); err != nil || !os.SameFile(fi, fi2) {
		t.Fatalf("the remaining agent rewrote a steady file (%v)", err)
	}
	if err := stopNew(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(owned); err == nil {
		t.Error("the last agent's stop left the owned file: the DaemonSet's delete would leave the node chained")
	}
	if _, err := os.Stat(filepath.Join(n.bin, "netready")); err == nil {
		t.Error("the last agent's stop left the binary")
	}
}
