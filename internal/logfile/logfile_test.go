package logfile

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netready/netready/internal/logrec"
)

func TestPlan(t *testing.T) {
	r := func(from, to string) rename { return rename{"l" + from, "l" + to} }
	tests := []struct {
		name          string
		keep, present int
		want          []rename
	}{
		{"first rotation", 3, 0, []rename{r("", ".1")}},
		{"one kept", 3, 1, []rename{r(".1", ".2"), r("", ".1")}},
		{"two kept", 3, 2, []rename{r(".2", ".3"), r(".1", ".2"), r("", ".1")}},
		{"full: .2 replaces .3", 3, 3, []rename{r(".2", ".3"), r(".1", ".2"), r("", ".1")}},
		{"keep one", 1, 1, []rename{r("", ".1")}},
		{"keep one, none yet", 1, 0, []rename{r("", ".1")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := plan("l", tt.keep, tt.present); !slices.Equal(got, tt.want) {
				t.Errorf("plan(keep %d, present %d) = %v, want %v", tt.keep, tt.present, got, tt.want)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	f := File{Path: "/x"}
	if f.maxBytes() != DefaultMaxBytes || f.keep() != DefaultKeep {
		t.Errorf("zero File: max %d keep %d, want the defaults", f.maxBytes(), f.keep())
	}
	if f := (File{MaxBytes: -1, Keep: 7}); f.maxBytes() != -1 || f.keep() != 7 {
		t.Errorf("set File: max %d keep %d, want -1 and 7", f.maxBytes(), f.keep())
	}
}

// TestAppendCreates: the directory (0750) and the file (0640) are created
// when missing, and lines accumulate.
func TestAppendCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "log", "netready")
	f := File{Path: filepath.Join(dir, "netready.log")}
	for _, l := range []string{"one\n", "two\n"} {
		if written, err := f.Append([]byte(l)); !written || err != nil {
			t.Fatalf("Append(%q) = %v, %v", l, written, err)
		}
	}
	if b, err := os.ReadFile(f.Path); err != nil || string(b) != "one\ntwo\n" {
		t.Errorf("file holds %q, %v", b, err)
	}
	for path, want := range map[string]fs.FileMode{dir: fs.ModeDir | 0o750, f.Path: 0o640} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode() &^ 0o022; got != want&^0o022 { // whatever the umask removed
			t.Errorf("%s: mode %v, want %v", path, st.Mode(), want)
		}
	}
}

// TestAppendRefuses: what is not a regular file is refused at once, with a
// reason, and Write sends the line and the reason to the fallback.
func TestAppendRefuses(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	symlink := filepath.Join(dir, "symlink.log")
	if err := os.Symlink(target, symlink); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.log")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(target, "netready.log")
	tests := []struct {
		name, path, want string
	}{
		{"symlink", symlink, "is a symbolic link"},
		{"fifo without a reader", fifo, "open: no such device or address"},
		{"directory", dir, "is a directory"},
		{"character device", "/dev/null", "is not a regular file (mode Dcrw-rw-rw-)"},
		{"parent is a file", notDir, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			written, err := File{Path: tt.path}.Append([]byte("line\n"))
			if written || err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.path) {
				t.Fatalf("Append = %v, %v; want not written and an error naming %s and containing %q", written, err, tt.path, tt.want)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("Append took %v to refuse", d)
			}
			var fb bytes.Buffer
			File{Path: tt.path}.Write([]byte("line\n"), &fb)
			lines := strings.SplitAfter(fb.String(), "\n")
			if len(lines) != 3 || lines[0] != "line\n" || !strings.Contains(lines[1], `"level":"WARN"`) || !strings.Contains(lines[1], tt.want) {
				t.Errorf("fallback got %q; want the line, then one WARN line saying %q", fb.String(), tt.want)
			}
		})
	}
	if b, _ := os.ReadFile(target); len(b) != 0 {
		t.Errorf("the symlink's target was written: %q", b)
	}
}

// lines writes n lines of about size bytes with Append.
func appendN(t *testing.T, f File, n, size int) {
	t.Helper()
	for i := range n {
		l := fmt.Sprintf("%04d %s\n", i, strings.Repeat("x", size-6))
		if written, err := f.Append([]byte(l)); !written || err != nil {
			t.Fatalf("Append %d: %v, %v", i, written, err)
		}
	}
}

// TestRotation: past the cap the file becomes .1, .1 becomes .2, and so
// on; at most Keep rotated files remain, the newest lines in the live file.
func TestRotation(t *testing.T) {
	f := File{Path: filepath.Join(t.TempDir(), "n.log"), MaxBytes: 100, Keep: 2}
	appendN(t, f, 2, 50) // 100 bytes: at the cap, not past it
	if _, err := os.Stat(Generation(f.Path, 1)); err == nil {
		t.Fatal("rotated at the cap; want only past it")
	}
	appendN(t, f, 1, 50) // past: rotated after the line
	if b, _ := os.ReadFile(Generation(f.Path, 1)); len(b) != 150 {
		t.Errorf(".1 holds %d bytes, want the 150 written before the rotation", len(b))
	}
	if st, err := os.Stat(f.Path); err == nil {
		t.Errorf("the live file exists (%d bytes) before any line after the rotation", st.Size())
	}
	appendN(t, f, 31, 50) // ten more rotations, one line in the live file
	if _, err := os.Stat(Generation(f.Path, 3)); err == nil {
		t.Error(".3 exists with Keep 2")
	}
	for n := range 3 {
		b, err := os.ReadFile(Generation(f.Path, n))
		if err != nil {
			t.Fatalf("generation %d: %v", n, err)
		}
		if len(b) > 150 {
			t.Errorf("generation %d holds %d bytes; a file is rotated by the line that takes it past 100", n, len(b))
		}
	}
	if b, _ := os.ReadFile(f.Path); !strings.HasSuffix(string(b), strings.Repeat("x", 44)+"\n") || !strings.HasPrefix(string(b), "0030 ") {
		t.Errorf("live file: %q", b)
	}
}

// TestRotationLockBusy: while another process rotates (holds the lock), a
// line past the cap does not wait and does not rotate; the next one does.
func TestRotationLockBusy(t *testing.T) {
	f := File{Path: filepath.Join(t.TempDir(), "n.log"), MaxBytes: 100, Keep: 2}
	lock, err := os.OpenFile(f.Path+".lock", os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	appendN(t, f, 3, 50)
	if d := time.Since(start); d > time.Second {
		t.Errorf("appends took %v with the lock held: they waited", d)
	}
	if _, err := os.Stat(Generation(f.Path, 1)); err == nil {
		t.Fatal("rotated while another held the lock")
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	appendN(t, f, 1, 50)
	if b, err := os.ReadFile(Generation(f.Path, 1)); err != nil || len(b) != 200 {
		t.Errorf(".1: %d bytes, %v; want all 4 lines once the lock was free", len(b), err)
	}
}

// TestRotationRechecks: a process that saw the file past the cap but got
// the lock after another rotated it leaves the fresh file alone.
func TestRotationRechecks(t *testing.T) {
	f := File{Path: filepath.Join(t.TempDir(), "n.log"), MaxBytes: 100, Keep: 2}
	if err := f.rotate(); err != nil { // no file at all: rotated, nothing written since
		t.Fatalf("rotate with no file: %v", err)
	}
	appendN(t, f, 1, 50)
	if err := f.rotate(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(Generation(f.Path, 1)); err == nil {
		t.Error("rotate renamed a file under the cap")
	}
}

// TestRotateFailure: a rotation that fails leaves the line written and
// says why, once, on the fallback.
func TestRotateFailure(t *testing.T) {
	f := File{Path: filepath.Join(t.TempDir(), "n.log"), MaxBytes: 10, Keep: 2}
	if err := os.Mkdir(f.Path+".lock", 0o700); err != nil { // the lock cannot be opened
		t.Fatal(err)
	}
	written, err := f.Append([]byte("0123456789ab\n"))
	if !written || err == nil || !strings.Contains(err.Error(), "rotating logFile") {
		t.Fatalf("Append = %v, %v; want written and a rotation error", written, err)
	}
	var fb bytes.Buffer
	f.Write([]byte("second line\n"), &fb)
	if n := strings.Count(fb.String(), "\n"); n != 1 || !strings.Contains(fb.String(), "cannot rotate logFile (the line is in it)") {
		t.Errorf("fallback got %q; want one line saying the rotation failed", fb.String())
	}
	if b, _ := os.ReadFile(f.Path); string(b) != "0123456789ab\nsecond line\n" {
		t.Errorf("file holds %q", b)
	}
}

// TestWriteFine: nothing reaches the fallback when all goes well.
func TestWriteFine(t *testing.T) {
	var fb bytes.Buffer
	f := File{Path: filepath.Join(t.TempDir(), "n.log"), MaxBytes: 10}
	f.Write([]byte("a line past the cap\n"), &fb)
	f.Write([]byte("another\n"), &fb)
	if fb.Len() != 0 {
		t.Errorf("fallback got %q", fb.String())
	}
	if recs, _ := filepath.Glob(f.Path + "*"); len(recs) != 3 { // n.log, n.log.1, n.log.lock
		t.Errorf("files %v, want the log, one rotated file and the lock", recs)
	}
}

// record is the line a helper process writes: a real log record, made
// long enough that lines differ in size.
func record(proc, seq int) []byte {
	r := logrec.Record{
		Time: time.Now(), Level: logrec.LevelInfo, Msg: "netready ADD", Verb: "ADD", Outcome: logrec.Ready,
		TotalMS:   float64(seq),
		Container: fmt.Sprintf("p%03d-%05d", proc, seq),
		Pod:       "default/" + strings.Repeat("x", seq%97),
	}
	b, err := r.Marshal()
	if err != nil {
		panic(err)
	}
	return b
}

// BenchmarkAppend is the cost the log adds to every ADD: one line, with and
// without the check that decides on a rotation.
func BenchmarkAppend(b *testing.B) {
	line := record(1, 42)
	for _, bc := range []struct {
		name string
		max  int64
	}{{"no rotation check", -1}, {"rotation check", DefaultMaxBytes}} {
		b.Run(bc.name, func(b *testing.B) {
			f := File{Path: filepath.Join(b.TempDir(), "n.log"), MaxBytes: bc.max}
			for b.Loop() {
				if _, err := f.Append(line); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// What it replaces: the plugin opened the file with os.OpenFile and
	// wrote through slog, without ever rotating it.
	b.Run("before: os.OpenFile", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "n.log")
		for b.Loop() {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.Write(line); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
}

// BenchmarkRotate is the cost of one rotation, paid by one line in
// DefaultMaxBytes worth.
func BenchmarkRotate(b *testing.B) {
	f := File{Path: filepath.Join(b.TempDir(), "n.log"), MaxBytes: 1, Keep: DefaultKeep}
	line := record(1, 42)
	for b.Loop() {
		if _, err := f.Append(line); err != nil { // every line rotates
			b.Fatal(err)
		}
	}
}
