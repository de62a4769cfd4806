package testbed

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/var/lib/k3s`:          "/var/lib/k3s",
		`/tmp/a\040b`:           "/tmp/a b",
		`/tmp/tab\011nl\012`:    "/tmp/tab\tnl\n",
		`/tmp/back\134slash`:    `/tmp/back\slash`,
		`/tmp/not\09`:           `/tmp/not\09`, // not three octal digits
		`/tmp/end\04`:           `/tmp/end\04`,
		`/tmp/two\040\040space`: "/tmp/two  space",
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestMountsUnder mounts two tmpfs, one on the other, under a dir whose name has a space, and
// unmounts them.
func TestMountsUnder(t *testing.T) {
	SkipUnlessRoot(t)
	dir := filepath.Join(t.TempDir(), "a dir")
	inner := filepath.Join(dir, "inner")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { UnmountUnder(dir) })
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", inner, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	if got := MountsUnder(dir); !slices.Equal(got, []string{dir, inner}) {
		t.Fatalf("MountsUnder = %q, want %q", got, []string{dir, inner})
	}
	if got := MountsUnder(dir + "/in"); len(got) != 0 {
		t.Errorf("MountsUnder(%q) = %q: a prefix of a name is not a dir", dir+"/in", got)
	}
	if err := UnmountUnder(dir); err != nil {
		t.Fatal(err)
	}
	if got := MountsUnder(dir); len(got) != 0 {
		t.Errorf("after UnmountUnder: %q", got)
	}
}
