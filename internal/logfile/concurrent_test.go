package logfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/internal/logrec"
)

// helperEnv makes the test binary a helper process that appends lines, as
// netready processes do: "path max keep proc lines".
const helperEnv = "NR_LOGFILE_HELPER"

func TestMain(m *testing.M) {
	if v := os.Getenv(helperEnv); v != "" {
		os.Exit(helper(v))
	}
	os.Exit(m.Run())
}

// helper waits for its stdin to close (so all start together), then
// appends its lines, each with Write as the plugin does.
func helper(spec string) int {
	var path string
	var maxBytes int64
	var keep, proc, lines int
	if _, err := fmt.Sscan(spec, &path, &maxBytes, &keep, &proc, &lines); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	f := File{Path: path, MaxBytes: maxBytes, Keep: keep}
	for seq := range lines {
		f.Write(record(proc, seq), os.Stderr)
	}
	return 0
}

// runHelpers starts procs helper processes appending lines each to f,
// releases them at once and waits for them. Their stderr must stay empty:
// any write there is a line that missed the file or a failed rotation.
func runHelpers(t *testing.T, f File, procs, lines int) {
	t.Helper()
	cmds := make([]*exec.Cmd, 0, procs)
	var gates []io.Closer
	stderr := make([]strings.Builder, procs)
	t.Cleanup(func() { // a failed start must not leave helpers behind
		for _, g := range gates {
			g.Close()
		}
		for _, c := range cmds {
			if c.ProcessState == nil {
				_ = c.Process.Kill()
				_ = c.Wait()
			}
		}
	})
	for i := range procs {
		c := exec.Command(os.Args[0], "-test.run=^$")
		c.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d %d %d", helperEnv, f.Path, f.MaxBytes, f.Keep, i, lines))
		c.Stderr = &stderr[i]
		gate, err := c.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		gates = append(gates, gate)
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, c)
	}
	for _, g := range gates {
		g.Close()
	}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Errorf("helper %d: %v: %s", i, err, stderr[i].String())
		} else if stderr[i].Len() > 0 {
			t.Errorf("helper %d wrote to its fallback: %s", i, stderr[i].String())
		}
	}
}

// readGenerations parses the live file and every rotated one present:
// each line must be a whole record, written once. It returns how many
// times each helper line was seen and how many rotated files there were.
func readGenerations(t *testing.T, path string) (seen map[string]int, rotated int, largest int64) {
	t.Helper()
	seen = map[string]int{}
	for n := 0; ; n++ {
		name := Generation(path, n)
		st, err := os.Stat(name)
		switch {
		case errors.Is(err, os.ErrNotExist) && n == 0:
			continue // the last line written rotated the live file away
		case errors.Is(err, os.ErrNotExist):
			return seen, n - 1, largest
		case err != nil:
			t.Fatal(err)
		}
		largest = max(largest, st.Size())
		recs, err := logrec.ReadFile(name)
		if err != nil {
			t.Fatalf("a torn or mixed line: %v", err)
		}
		for _, r := range recs {
			if !strings.HasPrefix(r.Pod, "default/") || r.Outcome != logrec.Ready {
				t.Fatalf("%s: a record not as written: %+v", name, r)
			}
			seen[r.Container]++
		}
	}
}

// TestConcurrentAppends: 100 processes append at once while the cap is so
// small that the file is rotated hundreds of times; Keep is large enough
// that no rotated file is dropped. Every line is then found exactly once,
// whole, across the generations.
func TestConcurrentAppends(t *testing.T) {
	const procs, lines = 100, 200
	f := File{Path: filepath.Join(t.TempDir(), "netready.log"), MaxBytes: 4 << 10, Keep: 100000}
	start := time.Now()
	runHelpers(t, f, procs, lines)
	elapsed := time.Since(start)
	seen, rotated, largest := readGenerations(t, f.Path)
	t.Logf("%d processes × %d lines in %v: %d rotations, largest file %d bytes (cap %d)",
		procs, lines, elapsed.Round(time.Millisecond), rotated, largest, f.MaxBytes)
	if rotated < 10 {
		t.Errorf("only %d rotations: the test did not rotate under load", rotated)
	}
	var lost, dup int
	for p := range procs {
		for s := range lines {
			switch n := seen[fmt.Sprintf("p%03d-%05d", p, s)]; {
			case n == 0:
				lost++
			case n > 1:
				dup++
			}
		}
	}
	if lost > 0 || dup > 0 || len(seen) != procs*lines {
		t.Errorf("%d lines lost, %d duplicated, %d distinct seen; want all %d once", lost, dup, len(seen), procs*lines)
	}
}

// TestConcurrentAppendsDropping: the same with Keep 3, as on a node: the
// oldest files are dropped, but what remains is whole and unique, at most
// Keep rotated files exist (Keep, unless a rotation's lock holder was kept
// off the CPU meanwhile), and each was rotated only once past the cap.
func TestConcurrentAppendsDropping(t *testing.T) {
	const procs, lines = 100, 50
	f := File{Path: filepath.Join(t.TempDir(), "netready.log"), MaxBytes: 64 << 10, Keep: 3}
	runHelpers(t, f, procs, lines)
	seen, rotated, _ := readGenerations(t, f.Path)
	switch {
	case rotated < 1 || rotated > f.Keep:
		t.Errorf("%d rotated files, want 1 to Keep = %d", rotated, f.Keep)
	case rotated < f.Keep && len(seen) != procs*lines:
		// A writer that finds the rotation lock taken does not wait, so a
		// holder that the scheduler keeps off the CPU (make test loads
		// the machine) lets the others append past the cap: fewer
		// rotations, which is allowed. But no line may go before Keep
		// rotated files exist.
		t.Errorf("%d of %d lines found with only %d rotated files: lines dropped before Keep = %d existed", len(seen), procs*lines, rotated, f.Keep)
	}
	for n := 1; n <= rotated; n++ {
		if st, err := os.Stat(Generation(f.Path, n)); err != nil || st.Size() <= f.MaxBytes {
			t.Errorf("rotated file %d: %v; want it past the cap of %d bytes", n, err, f.MaxBytes)
		}
	}
	for c, n := range seen {
		if n != 1 {
			t.Errorf("%s seen %d times", c, n)
		}
	}
	t.Logf("%d of %d lines kept in the live file and %d rotated ones", len(seen), procs*lines, rotated)
}
