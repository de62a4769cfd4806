package testns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestStale(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid // waited for: no such process now (barring pid reuse)
	for _, c := range []struct {
		name string
		want bool
	}{
		{fmt.Sprintf("nr-%d-1-pod", dead), true},
		{fmt.Sprintf("nr-%d-bin-123", dead), true},
		{fmt.Sprintf("nr-%d-1-pod", os.Getpid()), false}, // ours
		{"nr-1-x", false},                         // init is alive
		{fmt.Sprintf("nrtest-%d-1", dead), false}, // not our prefix
		{"cni-1f2e3d", false},                     // the runtime's
		{"nr--x", false},
	} {
		if got := Stale(c.name); got != c.want {
			t.Errorf("Stale(%q) = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestNewRemovesAtEnd(t *testing.T) {
	SkipUnlessRoot(t)
	var path string
	t.Run("inner", func(t *testing.T) {
		var name string
		name, path = New(t, "probe")
		if !strings.HasPrefix(name, Prefix()) || filepath.Join(Dir, name) != path {
			t.Errorf("New = %q, %q; want a name starting %q under %s", name, path, Prefix(), Dir)
		}
		if out, err := Command(t.Context(), "ip", "netns", "exec", name, "ip", "link", "show", "lo"); err != nil {
			t.Fatalf("the netns does not work: %v: %s", err, out)
		}
	})
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after the test ended (%v)", path, err)
	}
}

func TestRemoveStale(t *testing.T) {
	SkipUnlessRoot(t)
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("nr-%d-testns-stale", cmd.Process.Pid)
	path, err := Add(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Delete(name) })
	removed, err := RemoveStale()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range removed {
		found = found || r == path
	}
	if _, serr := os.Stat(path); !found || !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("RemoveStale = %v; want it to have removed %s (stat: %v)", removed, path, serr)
	}
}
