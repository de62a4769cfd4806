package install

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

func binDirWith(t *testing.T, types ...string) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range types {
		if err := os.WriteFile(filepath.Join(d, p), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func TestValidateConflist(t *testing.T) {
	full := binDirWith(t, "flannel", "portmap", "bandwidth", "netready")
	noExec := binDirWith(t, "flannel", "portmap", "bandwidth")
	if err := os.WriteFile(filepath.Join(noExec, "netready"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	list := mustOwned(t, k3sLive)
	tests := []struct {
		name    string
		data    string
		dirs    []string
		wantErr string
	}{
		{name: "valid", data: list, dirs: []string{full}},
		{name: "plugins split over two dirs", data: list, dirs: []string{binDirWith(t, "flannel", "portmap"), binDirWith(t, "bandwidth", "netready")}},
		{name: "netready missing", data: list, dirs: []string{binDirWith(t, "flannel", "portmap", "bandwidth")}, wantErr: "no executable for plugin type(s) netready"},
		{name: "netready not executable", data: list, dirs: []string{noExec}, wantErr: "netready"},
		{name: "half written", data: list[:len(list)/2], dirs: []string{full}, wantErr: "libcni cannot load it"},
		{name: "empty", data: "", dirs: []string{full}, wantErr: "libcni cannot load it"},
		{name: "no plugins", data: `{"name":"a","cniVersion":"1.0.0","plugins":[]}`, dirs: []string{full}, wantErr: "no plugins"},
		{name: "a type with a slash", data: `{"name":"a","cniVersion":"1.0.0","plugins":[{"type":"../flannel"}]}`, dirs: []string{full}, wantErr: "../flannel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateConflist([]byte(tt.data), tt.dirs)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v; want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func mustOwned(t *testing.T, primary string) string {
	t.Helper()
	obj, err := PluginObject(Settings{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := BuildOwned([]byte(primary), obj)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestTempNameIsNeverAConflist checks the premise of the atomic write
// against libcni itself: a dot-file named like a conflist is listed (so
// ".00-netready.conflist" would be read), the writer's temp name is not.
func TestTempNameIsNeverAConflist(t *testing.T) {
	d := t.TempDir()
	for _, f := range []string{".00-netready.conflist", "." + OwnedName + tempMarker + "123", "10-flannel.conflist"} {
		if err := os.WriteFile(filepath.Join(d, f), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	files, err := libcni.ConfFiles(d, ConfExtensions)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	got := strings.Join(names, " ")
	if !strings.Contains(got, ".00-netready.conflist") || strings.Contains(got, tempMarker) {
		t.Fatalf("libcni lists %q; want the dot-file listed and the temp file not", got)
	}
	first, _, _ := FirstConflist(d)
	if filepath.Base(first) != ".00-netready.conflist" {
		t.Fatalf("first = %s; want the dot-file, which sorts first", first)
	}
}

func TestWriteConflistRefusesInvalid(t *testing.T) {
	dir := t.TempDir()
	bin := binDirWith(t, "flannel", "portmap", "bandwidth")
	old := mustOwned(t, k3sLive)
	if err := os.WriteFile(filepath.Join(dir, OwnedName), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		"netready binary missing": old,
		"not JSON":                `{"name":"cbr0",`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := WriteConflist(dir, OwnedName, []byte(data), []string{bin})
			if err == nil || !strings.Contains(err.Error(), "unchanged") {
				t.Fatalf("err = %v; want a refusal saying the file is unchanged", err)
			}
			got, _ := os.ReadFile(filepath.Join(dir, OwnedName))
			if string(got) != old {
				t.Fatal("the file changed")
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 1 {
				t.Fatalf("dir holds %d entries; want the file alone, no temp left", len(ents))
			}
		})
	}
}

func TestWriteConflistModeAndContent(t *testing.T) {
	dir := t.TempDir()
	bin := binDirWith(t, "flannel", "portmap", "bandwidth", "netready")
	data := mustOwned(t, k3sLive)
	old := syscall.Umask(0o077)
	_, err := WriteConflist(dir, OwnedName, []byte(data), []string{bin})
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, OwnedName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v; want 0644 whatever the umask", fi.Mode().Perm())
	}
	if got, _ := os.ReadFile(filepath.Join(dir, OwnedName)); string(got) != data {
		t.Error("content differs")
	}
}

// The crash-safety test runs the writer in a child process that exits at
// one step of the write, for every step, and checks after each that the
// conf dir holds a chain containerd can load, the old one or the new one,
// and that the next write cleans up and succeeds.
var crashSteps = []string{"created", "half-written", "written", "synced", "validated", "renamed", "dir-synced"}

func TestMain(m *testing.M) {
	if step := os.Getenv("NETREADY_TEST_CRASH_AT"); step != "" {
		crashChild(step)
		return
	}
	if n := os.Getenv("NETREADY_TEST_WRITES"); n != "" {
		writerChild(n)
		return
	}
	os.Exit(m.Run())
}

func crashChild(at string) {
	crashHook = func(s string) {
		if s == at {
			os.Exit(42)
		}
	}
	dir, bins := os.Getenv("NETREADY_TEST_DIR"), os.Getenv("NETREADY_TEST_BIN")
	data, _ := os.ReadFile(os.Getenv("NETREADY_TEST_DATA"))
	if _, err := WriteConflist(dir, OwnedName, data, []string{bins}); err != nil {
		os.Stderr.WriteString(err.Error())
		os.Exit(1)
	}
	os.Exit(0)
}

func TestWriteConflistCrashAtEveryStep(t *testing.T) {
	bin := binDirWith(t, "flannel", "portmap", "bandwidth", "netready")
	newData := mustOwned(t, `{"name":"cbr0","cniVersion":"1.1.0","plugins":[{"type":"flannel"},{"type":"portmap","capabilities":{"portMappings":true}}]}`)
	oldData := mustOwned(t, k3sLive)
	dataFile := filepath.Join(t.TempDir(), "new")
	if err := os.WriteFile(dataFile, []byte(newData), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, withOld := range []bool{true, false} {
		for _, at := range crashSteps {
			name := at
			if !withOld {
				name = "first install/" + at
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				if err := os.WriteFile(filepath.Join(dir, PrimaryName), []byte(k3sLive), 0o644); err != nil {
					t.Fatal(err)
				}
				if withOld {
					if err := os.WriteFile(filepath.Join(dir, OwnedName), []byte(oldData), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				cmd := exec.Command(os.Args[0], "-test.run=^$")
				cmd.Env = append(os.Environ(), "NETREADY_TEST_CRASH_AT="+at, "NETREADY_TEST_DIR="+dir,
					"NETREADY_TEST_BIN="+bin, "NETREADY_TEST_DATA="+dataFile)
				out, err := cmd.CombinedOutput()
				if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 42 {
					t.Fatalf("child did not crash at %s: %v %s", at, err, out)
				}
				path, data, err := FirstConflist(dir)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := libcni.ConfListFromBytes(data); err != nil {
					t.Fatalf("after a crash at %s containerd's first file %s does not load: %v", at, filepath.Base(path), err)
				}
				switch filepath.Base(path) {
				case OwnedName:
					if string(data) != oldData && string(data) != newData {
						t.Fatalf("after a crash at %s %s is neither the old chain nor the new", at, OwnedName)
					}
				case PrimaryName:
					if withOld {
						t.Fatalf("after a crash at %s the owned file vanished", at)
					}
				default:
					t.Fatalf("after a crash at %s containerd reads %s", at, path)
				}
				// The next run removes the leftover temp file and puts the new chain in place.
				if _, err := WriteConflist(dir, OwnedName, []byte(newData), []string{bin}); err != nil {
					t.Fatal(err)
				}
				ents, _ := os.ReadDir(dir)
				if len(ents) != 2 {
					t.Fatalf("dir holds %d entries after the next write; want the two conflists", len(ents))
				}
				if got, _ := os.ReadFile(filepath.Join(dir, OwnedName)); !bytes.Equal(got, []byte(newData)) {
					t.Fatal("the next write did not put the new chain in place")
				}
			})
		}
	}
}

func TestInstallBinaryRenamesNeverOverwrites(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(t.TempDir(), "netready")
	os.WriteFile(src, []byte("new build"), 0o600)
	dst := filepath.Join(dir, "netready")
	os.WriteFile(dst, []byte("old build"), 0o755)
	running, err := os.Open(dst) // as a running netready holds its binary
	if err != nil {
		t.Fatal(err)
	}
	defer running.Close()
	if err := InstallBinary(src, dir, "netready"); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(dst)
	if fi.Mode().Perm() != 0o755 {
		t.Errorf("mode %v; want 0755", fi.Mode().Perm())
	}
	if got, _ := os.ReadFile(dst); string(got) != "new build" {
		t.Errorf("installed %q; want the new build", got)
	}
	old := make([]byte, 9)
	if _, err := running.ReadAt(old, 0); err != nil || string(old) != "old build" {
		t.Errorf("the running binary's inode reads %q (%v); want the old build untouched", old, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("bin dir holds %d entries; want netready alone", len(ents))
	}
}

// BenchmarkWriteConflist: the whole atomic write of K3s's chain with
// netready (temp file, fsync, validate, rename, fsync of the dir).
func BenchmarkWriteConflist(b *testing.B) {
	dir := b.TempDir()
	bin := b.TempDir()
	for _, p := range []string{"flannel", "portmap", "bandwidth", "netready"} {
		os.WriteFile(filepath.Join(bin, p), []byte("#!/bin/sh\n"), 0o755)
	}
	obj, _ := PluginObject(Settings{})
	data, _ := BuildOwned([]byte(k3sLive), obj)
	for b.Loop() {
		if _, err := WriteConflist(dir, OwnedName, data, []string{bin}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestWriteConflistReturnsItsOwnFile: the file WriteConflist returns is the
// one it put in place, even when another writer renames its own over it at
// once (two agents in a rolling update): a stat of the path after the
// write would take the other's for this one's, and this one's stop would
// then remove a file it does not own.
func TestWriteConflistReturnsItsOwnFile(t *testing.T) {
	dir := t.TempDir()
	bin := binDirWith(t, "flannel", "portmap", "bandwidth", "netready")
	data := mustOwned(t, k3sLive)
	p := filepath.Join(dir, OwnedName)
	var ours, theirs os.FileInfo
	crashHook = func(s string) {
		if s != "renamed" {
			return
		}
		crashHook = nil
		ours, _ = os.Stat(p)
		other := filepath.Join(dir, ".other")
		if err := os.WriteFile(other, []byte(data), 0o644); err != nil {
			t.Error(err)
		}
		if err := os.Rename(other, p); err != nil {
			t.Error(err)
		}
		theirs, _ = os.Stat(p)
	}
	defer func() { crashHook = nil }()
	fi, err := WriteConflist(dir, OwnedName, []byte(data), []string{bin})
	if err != nil {
		t.Fatal(err)
	}
	if ours == nil || theirs == nil {
		t.Fatal("the hook did not run at the rename")
	}
	if !os.SameFile(fi, ours) || os.SameFile(fi, theirs) {
		t.Errorf("WriteConflist returned %v; want the file it renamed into place, not the one renamed over it after", fi.Sys())
	}
}

// TestLiveWritersTempIsLeftAlone: a temp file another writer holds is not
// a crashed run's leftover; once its writer is gone, it is.
func TestLiveWritersTempIsLeftAlone(t *testing.T) {
	dir := t.TempDir()
	bin := binDirWith(t, "flannel", "portmap", "bandwidth", "netready")
	data := mustOwned(t, k3sLive)
	theirs := filepath.Join(dir, "."+OwnedName+tempMarker+"4242")
	if err := os.WriteFile(theirs, []byte("half a ch"), 0o600); err != nil {
		t.Fatal(err)
	}
	held, err := os.Open(theirs)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := syscall.Flock(int(held.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteConflist(dir, OwnedName, []byte(data), []string{bin}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(theirs); err != nil {
		t.Fatalf("a write removed another writer's temp file, still locked: %v", err)
	}
	held.Close() // its writer dies
	if _, err := WriteConflist(dir, OwnedName, []byte(data), []string{bin}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(theirs); !os.IsNotExist(err) {
		t.Fatalf("a dead writer's temp file is still there after the next write (%v)", err)
	}
}

// writerChild writes the owned conflist n times, from two goroutines at
// once: a process of TestConcurrentWriters.
func writerChild(n string) {
	dir, bins := os.Getenv("NETREADY_TEST_DIR"), os.Getenv("NETREADY_TEST_BIN")
	data, _ := os.ReadFile(os.Getenv("NETREADY_TEST_DATA"))
	times, _ := strconv.Atoi(n)
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			for range times {
				if _, err := WriteConflist(dir, OwnedName, data, []string{bins}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			os.Stderr.WriteString(err.Error())
			os.Exit(1)
		}
	}
	os.Exit(0)
}

// TestConcurrentWriters: writers of one conf dir at once (two agents in a
// rolling update, a reconcile and an install, each process perhaps pid 1 in
// its own namespace) never fail each other's writes, and leave nothing but
// the conflists behind.
func TestConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	bin := binDirWith(t, "flannel", "portmap", "bandwidth", "netready")
	data := mustOwned(t, k3sLive)
	if err := os.WriteFile(filepath.Join(dir, PrimaryName), []byte(k3sLive), 0o644); err != nil {
		t.Fatal(err)
	}
	dataFile := filepath.Join(t.TempDir(), "new")
	if err := os.WriteFile(dataFile, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "NETREADY_TEST_WRITES=40", "NETREADY_TEST_DIR="+dir,
			"NETREADY_TEST_BIN="+bin, "NETREADY_TEST_DATA="+dataFile)
		out := new(bytes.Buffer)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("writer %d: %v: %s", i, err, outs[i])
		}
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 2 {
		t.Errorf("dir holds %v after the writers; want the two conflists", names)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, OwnedName)); string(got) != data {
		t.Error("the owned conflist is not what the writers wrote")
	}
}
