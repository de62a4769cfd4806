package waitstats

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/netready/netready/internal/logfile"
	"github.com/netready/netready/internal/logrec"
)

// maxGenerations bounds the rotated files read (path.1 … path.N); logfile keeps 3 by default.
const maxGenerations = 100

// ReadLog reads the log at path and its rotated generations (path.1 the newest), oldest first,
// keeping the records written at or after since (all when since is zero). Lines that are not
// records (a warning of netready's own, a line torn by a full disk) are counted in bad, not fatal.
// A missing generation ends the list; a missing path is an error only when no generation exists.
func ReadLog(path string, since time.Time) (recs []logrec.Record, bad int, err error) {
	var files []string
	for n := 1; n <= maxGenerations; n++ {
		g := logfile.Generation(path, n)
		if _, err := os.Stat(g); err != nil {
			break
		}
		files = append([]string{g}, files...) // oldest first
	}
	files = append(files, path)
	for i := range files {
		b, err := os.ReadFile(files[i])
		if errors.Is(err, fs.ErrNotExist) && files[i] == path && len(files) > 1 {
			continue // just rotated: the live file is not there yet
		}
		if err != nil {
			return recs, bad, fmt.Errorf("read netready's log: %w", err)
		}
		s := bufio.NewScanner(bytes.NewReader(b))
		s.Buffer(nil, 1<<20)
		for s.Scan() {
			if len(bytes.TrimSpace(s.Bytes())) == 0 {
				continue
			}
			r, err := logrec.Parse(s.Bytes())
			if err != nil {
				bad++
				continue
			}
			if since.IsZero() || !r.Time.Before(since) {
				recs = append(recs, r)
			}
		}
		if err := s.Err(); err != nil {
			return recs, bad, fmt.Errorf("read %s: %w", files[i], err)
		}
	}
	return recs, bad, nil
}
