// Package testns makes named network namespaces for tests, the one way the
// repository's tests do: `ip netns add`, names that start nr-<pid>- so that
// parallel runs never collide and a killed run's are found, removal when the
// test ends (also when it fails), and removal of killed runs' leftovers.
package testns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// Dir is where `ip netns` keeps named network namespaces.
const Dir = "/var/run/netns"

// Prefix is what the names of this process's netns (and temp dirs) start
// with: nr-<pid>-.
func Prefix() string { return fmt.Sprintf("nr-%d-", os.Getpid()) }

// Add makes the named netns and returns its path, which CNI_NETNS carries.
func Add(ctx context.Context, name string) (path string, err error) {
	if _, err := Command(ctx, "ip", "netns", "add", name); err != nil {
		return "", err
	}
	return filepath.Join(Dir, name), nil
}

// Delete removes the named netns; one that is already gone is no error.
// The kernel frees it, and destroys its virtual links, once the last
// socket or process in it is gone.
func Delete(name string) error {
	if _, err := os.Stat(filepath.Join(Dir, name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	_, err := Command(context.Background(), "ip", "netns", "delete", name)
	return err
}

var seq atomic.Int32

var staleOnce sync.Once

// New makes a netns for t, named Prefix()+<n>-what, and deletes it when t
// ends. It skips t when not root, and the first call of a process removes
// the netns of killed runs (RemoveStale).
func New(t testing.TB, what string) (name, path string) {
	t.Helper()
	SkipUnlessRoot(t)
	staleOnce.Do(func() {
		removed, err := RemoveStale()
		for _, r := range removed {
			t.Logf("removed the leftover of a killed run: %s", r)
		}
		if err != nil {
			t.Logf("removing the leftovers of killed runs: %v", err)
		}
	})
	name = fmt.Sprintf("%s%d-%s", Prefix(), seq.Add(1), what)
	path, err := Add(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Delete(name); err != nil {
			t.Errorf("%v", err)
		}
	})
	return name, path
}

// SkipUnlessRoot skips t when not run as root.
func SkipUnlessRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces (CI runs as root)")
	}
}

// stalePrefix matches the names this package and the test beds give: nr-<pid>-...
var stalePrefix = regexp.MustCompile(`^nr-([0-9]+)-`)

// Stale says whether name is one of ours (nr-<pid>-...) left by a process
// that no longer exists: killed, or stopped by `go test -timeout`, before
// its cleanup ran. Those of live processes, this one included, are not.
func Stale(name string) bool {
	m := stalePrefix.FindStringSubmatch(name)
	if m == nil {
		return false
	}
	pid, err := strconv.Atoi(m[1])
	return err == nil && pid != os.Getpid() && errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// RemoveStale deletes the netns that Stale finds and returns their paths.
func RemoveStale() ([]string, error) {
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		if !Stale(e.Name()) {
			continue
		}
		if err := Delete(e.Name()); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, filepath.Join(Dir, e.Name()))
	}
	return removed, errors.Join(errs...)
}

// Command runs name with args and returns its combined output; the error
// holds the command line and the output.
func Command(ctx context.Context, name string, args ...string) ([]byte, error) {
	return CommandInput(ctx, "", name, args...)
}

// CommandInput is Command with stdin.
func CommandInput(ctx context.Context, stdin string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Run runs name with args for t (`ip -n NS link add ...`) and fails t if it
// fails.
func Run(t testing.TB, name string, args ...string) {
	t.Helper()
	if _, err := Command(context.Background(), name, args...); err != nil {
		t.Fatal(err)
	}
}

// OpenFDs counts this process's open file descriptors: what a test compares
// before and after to show that nothing was left open.
func OpenFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
