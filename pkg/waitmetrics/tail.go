package waitmetrics

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"
)

// maxLine bounds a line kept while waiting for its end: a record is a few KB at most, so anything
// longer is junk, dropped rather than held.
const maxLine = 1 << 20

// Tail follows a log file that logfile rotates by renaming: it reads what is appended, and when
// the name points to a new file it first drains the old one (a line written just before the
// rename is there), then reads the new one from its start. A file truncated in place is read
// again from its start. Lines are handed over whole, without their newline.
type Tail struct {
	Path string

	f       *os.File // the file being read; nil until Path exists
	ino     uint64
	partial []byte // a line whose end has not been written yet
}

// Poll reads every whole line written since the last Poll and hands each to emit.
func (t *Tail) Poll(emit func([]byte)) error {
	if t.f == nil {
		if err := t.open(); err != nil {
			return err
		}
		if t.f == nil {
			return nil // not there yet: ADD creates it on its first line
		}
	}
	if err := t.drain(emit); err != nil {
		return err
	}
	fi, err := os.Stat(t.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // renamed, the new one not written yet: the old one is drained
	}
	if err != nil {
		return err
	}
	if ino(fi) != t.ino {
		// Rotated: what was appended to the old file after the drain above is read first.
		if err := t.drain(emit); err != nil {
			return err
		}
		t.f.Close()
		t.f, t.partial = nil, nil
		if err := t.open(); err != nil || t.f == nil {
			return err
		}
		return t.drain(emit)
	}
	if off, err := t.f.Seek(0, io.SeekCurrent); err == nil && fi.Size() < off {
		// Truncated in place (copytruncate): start again.
		if _, err := t.f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		t.partial = nil
		return t.drain(emit)
	}
	return nil
}

func (t *Tail) open() error {
	f, err := os.Open(t.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	t.f, t.ino = f, ino(fi)
	return nil
}

func (t *Tail) drain(emit func([]byte)) error {
	buf := make([]byte, 64<<10)
	for {
		n, err := t.f.Read(buf)
		data := buf[:n]
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				if len(t.partial)+len(data) <= maxLine {
					t.partial = append(t.partial, data...)
				} else {
					t.partial = t.partial[:0]
				}
				break
			}
			line := data[:i]
			if len(t.partial) > 0 {
				line = append(t.partial, line...)
				t.partial = t.partial[:0]
			}
			if len(bytes.TrimSpace(line)) > 0 {
				emit(line)
			}
			data = data[i+1:]
		}
		if err == io.EOF || n == 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Close releases the file.
func (t *Tail) Close() error {
	if t.f == nil {
		return nil
	}
	err := t.f.Close()
	t.f = nil
	return err
}

// Follow polls every interval until ctx is done; a poll error goes to onErr and the next poll
// tries again (the log dir may be remounted, the file briefly unreadable).
func (t *Tail) Follow(ctx context.Context, interval time.Duration, emit func([]byte), onErr func(error)) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if err := t.Poll(emit); err != nil && onErr != nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
			t.Close()
			return
		case <-tick.C:
		}
	}
}

func ino(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
