// Package logfile appends netready's log lines to a file and keeps it
// bounded itself: on a K3s node nothing rotates /var/log/netready.
//
// Dozens of netready processes append at once (one per CNI call), each for
// one line, so the file is never held open: every line is one open, one
// write(2) on O_APPEND (which the kernel makes atomic with respect to other
// appends: no line is torn or interleaved) and one close. A process whose
// line took the file past the cap rotates it by renaming, under an flock on
// a lock file next to the log, after checking the size again under the
// lock. A line written to the old inode just before the rename is in the
// renamed file: rotation loses nothing it keeps.
package logfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultMaxBytes is the size past which the log is rotated. A record is
// 0.3-1 KB (more with many probes), and a pod makes two (ADD, DEL): 10 MB
// hold some ten thousand pods' worth, days of churn on a busy node, while
// a file of that size still opens at once in an editor or `less`.
const DefaultMaxBytes = 10 << 20

// DefaultKeep is how many rotated files are kept (log.1 the newest): with
// the live one, at most about 40 MB under /var/log, and the lines of a
// failing pod's whole retry history survive even a burst of churn.
const DefaultKeep = 3

// File is a log file that rotates itself. The zero value of MaxBytes and
// Keep means their defaults.
type File struct {
	Path     string // absolute; its directory is created (0750) when missing
	MaxBytes int64  // rotate once the file passes this size; negative: never
	Keep     int    // rotated files kept, Path.1 (newest) to Path.Keep
}

func (f File) maxBytes() int64 {
	if f.MaxBytes == 0 {
		return DefaultMaxBytes
	}
	return f.MaxBytes
}

func (f File) keep() int {
	if f.Keep <= 0 {
		return DefaultKeep
	}
	return f.Keep
}

// Write appends line and never fails: when the line cannot reach the file
// it goes to fallback (the plugin's stderr), followed by one line saying
// why; when it reached the file but the rotation after failed, only the
// line saying why goes to fallback.
func (f File) Write(line []byte, fallback io.Writer) {
	written, err := f.Append(line)
	if err == nil {
		return
	}
	msg := "netready: cannot write logFile, logging to stderr"
	if written {
		msg = "netready: cannot rotate logFile (the line is in it)"
	} else {
		_, _ = fallback.Write(line) // stderr is the last resort
	}
	_, _ = fallback.Write(warning(msg, err))
}

// warning is a line in the log's format (log/slog's keys) saying what went
// wrong with the log itself.
func warning(msg string, err error) []byte {
	b, jerr := json.Marshal(struct {
		Time  time.Time `json:"time"`
		Level string    `json:"level"`
		Msg   string    `json:"msg"`
		Error string    `json:"error"`
	}{time.Now(), "WARN", msg, err.Error()})
	if jerr != nil { // cannot happen for these types; say something anyway
		return []byte(msg + ": " + err.Error() + "\n")
	}
	return append(b, '\n')
}

// Append appends line (one whole line, newline included) with a single
// write(2), then rotates the file if the line took it past the cap.
// written says whether the line reached the file; err is why it did not,
// or why the rotation after it failed.
func (f File) Append(line []byte) (written bool, err error) {
	size, err := appendLine(f.Path, line)
	if err != nil {
		return false, err
	}
	if limit := f.maxBytes(); limit > 0 && size+int64(len(line)) > limit {
		if err := f.rotate(); err != nil {
			return true, fmt.Errorf("rotating logFile %s past %d bytes: %w; the file keeps growing until a rotation succeeds", f.Path, limit, err)
		}
	}
	return true, nil
}

// appendLine writes line to the end of path and returns the file's size
// before it (as statx saw it just before the write: others may append in
// between, which only makes a rotation come one line later).
//
// Its syscalls are raw: the plugin writes its line as it answers, and after
// a path opens every waiting ADD on the node does so at once. An ordinary
// wrapper (entersyscall) wakes the Go runtime's sysmon, which then polls
// every 20 µs until the process exits, and takes the P from a syscall that
// blocks longer than that (110 ADDs appending to one file wait on its
// lock); on two CPUs those wake-ups were a fifth of the burst's work. A
// raw syscall that blocks holds the P instead, which at the end of an
// invocation keeps nothing from running that matters.
func appendLine(path string, line []byte) (int64, error) {
	// O_NOFOLLOW: netready runs as root, and a symlink planted where the
	// log goes would have it append to (and rotate) any file. O_NONBLOCK:
	// opening a FIFO with no reader would block the ADD forever.
	const flags = unix.O_WRONLY | unix.O_APPEND | unix.O_CREAT | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NONBLOCK
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return 0, fmt.Errorf("logFile %q: %w", path, err)
	}
	fd, err := rawOpen(p, flags, 0o640)
	if errors.Is(err, unix.ENOENT) {
		if merr := os.MkdirAll(filepath.Dir(path), 0o750); merr != nil {
			return 0, fmt.Errorf("logFile %s: creating its directory: %w", path, merr)
		}
		fd, err = rawOpen(p, flags, 0o640)
	}
	switch {
	case errors.Is(err, unix.ELOOP):
		return 0, fmt.Errorf("logFile %s is a symbolic link: netready, running as root, does not follow one there; point logFile at the file itself", path)
	case err != nil:
		return 0, fmt.Errorf("logFile %s: open: %w", path, err)
	}
	defer unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
	var st unix.Statx_t
	if _, _, errno := unix.RawSyscall6(unix.SYS_STATX, uintptr(fd), uintptr(unsafe.Pointer(&empty[0])), unix.AT_EMPTY_PATH,
		unix.STATX_TYPE|unix.STATX_MODE|unix.STATX_SIZE, uintptr(unsafe.Pointer(&st)), 0); errno != 0 {
		return 0, fmt.Errorf("logFile %s: statx: %w", path, errno)
	}
	if mode := uint32(st.Mode); mode&unix.S_IFMT != unix.S_IFREG {
		return 0, fmt.Errorf("logFile %s is not a regular file (mode %s): netready appends to it and rotates it; point logFile at a regular file", path, fs.FileMode(mode&0o777)|typeOf(mode))
	}
	n, err := rawWrite(fd, line)
	switch {
	case err != nil:
		return 0, fmt.Errorf("logFile %s: write: %w", path, err)
	case n != len(line):
		// Only a full disk or a file size limit does this to a regular
		// file. Writing the rest separately could interleave with
		// others' lines: leave the stub, the caller logs elsewhere.
		return 0, fmt.Errorf("logFile %s: wrote %d of %d bytes (disk full?)", path, n, len(line))
	}
	return int64(st.Size), nil
}

var empty = [1]byte{}

// rawOpen is open(2) as a raw syscall, retried when a signal interrupts it.
func rawOpen(path *byte, flags int, mode uint32) (int, error) {
	cwd := unix.AT_FDCWD
	for {
		fd, _, errno := unix.RawSyscall6(unix.SYS_OPENAT, uintptr(cwd), uintptr(unsafe.Pointer(path)), uintptr(flags), uintptr(mode), 0, 0)
		switch errno {
		case 0:
			return int(fd), nil
		case unix.EINTR:
			continue
		}
		return -1, errno
	}
}

// rawWrite is write(2) as a raw syscall, retried when a signal interrupts
// it before it wrote anything.
func rawWrite(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch errno {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		}
		return 0, errno
	}
}

// typeOf is the fs.FileMode type bits of a stat mode, for messages.
func typeOf(mode uint32) fs.FileMode {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return fs.ModeDir
	case unix.S_IFIFO:
		return fs.ModeNamedPipe
	case unix.S_IFCHR:
		return fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		return fs.ModeDevice
	case unix.S_IFSOCK:
		return fs.ModeSocket
	}
	return fs.ModeIrregular
}

// rotate renames Path to Path.1 (shifting the older ones up, dropping the
// one past Keep), unless another process holds the rotation lock (it is
// rotating: the file is about to be fresh) or has rotated since this one
// looked (the size, checked again under the lock, is under the cap).
func (f File) rotate() error {
	// The lock file stays: removing it would let two processes lock two
	// different inodes of the same name.
	lock, err := unix.Open(f.Path+".lock", unix.O_RDONLY|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("lock file: %w", err)
	}
	defer unix.Close(lock)
	// Never wait: a rotation takes a few renames, and whoever holds the
	// lock is doing it. The next line past the cap tries again.
	if err := unix.Flock(lock, unix.LOCK_EX|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
		return nil
	} else if err != nil {
		return fmt.Errorf("flock %s.lock: %w", f.Path, err)
	}
	// Unlocked when closed.

	var st unix.Stat_t
	if err := unix.Lstat(f.Path, &st); errors.Is(err, unix.ENOENT) {
		return nil // rotated and not written since
	} else if err != nil {
		return err
	}
	if st.Size <= f.maxBytes() || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil
	}
	for _, r := range plan(f.Path, f.keep(), f.generations()) {
		// rename(2) replaces the destination and follows no symlink.
		if err := unix.Rename(r.from, r.to); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("rename %s to %s: %w", r.from, r.to, err)
		}
	}
	return nil
}

// generations counts the rotated files present, Path.1 up to the first
// missing one, at most Keep.
func (f File) generations() int {
	n := 0
	for n < f.keep() {
		if _, err := os.Lstat(Generation(f.Path, n+1)); err != nil {
			break
		}
		n++
	}
	return n
}

// Generation is the name of the n-th rotated file of path (n ≥ 1; 0 is
// path itself).
func Generation(path string, n int) string {
	if n == 0 {
		return path
	}
	return path + "." + strconv.Itoa(n)
}

type rename struct{ from, to string }

// plan lists the renames of one rotation, oldest first, when present
// rotated files exist (Path.1 to Path.present): each shifts up by one, the
// last kept one replacing (dropping) Path.keep, and Path becomes Path.1.
func plan(path string, keep, present int) []rename {
	top := min(present, keep-1) // Path.keep is overwritten, not shifted
	out := make([]rename, 0, top+1)
	for n := top; n >= 1; n-- {
		out = append(out, rename{Generation(path, n), Generation(path, n+1)})
	}
	return append(out, rename{path, Generation(path, 1)})
}
