package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// writeBins writes one distinct fake binary per arch and returns the -bin flags.
func writeBins(t *testing.T, dir string) (flags []string, content map[string][]byte) {
	t.Helper()
	content = map[string][]byte{}
	for _, p := range Platforms {
		b := []byte("\x7fELF fake netready for " + p.String())
		f := filepath.Join(dir, "netready-"+p.Arch)
		if err := os.WriteFile(f, b, 0o755); err != nil {
			t.Fatal(err)
		}
		flags = append(flags, "-bin", p.Arch+"="+f)
		content[p.Arch] = b
	}
	return flags, content
}

// TestReproducible builds everything twice into two directories: every file must be byte for byte
// the same, as `make dist` promises for its tarballs.
func TestReproducible(t *testing.T) {
	tmp := t.TempDir()
	bins, _ := writeBins(t, tmp)
	var outs [2]string
	for i := range outs {
		outs[i] = filepath.Join(tmp, "out", string(rune('a'+i)))
		args := append([]string{"-version", "v1.2.3", "-epoch", "1700000000", "-out", outs[i]}, bins...)
		if err := run(args); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
	}
	names, err := os.ReadDir(outs[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 4 {
		t.Fatalf("want 3 image tarballs and 1 layout tarball, got %v", names)
	}
	for _, n := range names {
		a, err := os.ReadFile(filepath.Join(outs[0], n.Name()))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(outs[1], n.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between two builds of the same inputs", n.Name())
		}
	}
	// And a different date must change the bytes: the test would pass vacuously otherwise.
	out3 := filepath.Join(tmp, "out", "c")
	if err := run(append([]string{"-version", "v1.2.3", "-epoch", "1700000001", "-out", out3}, bins...)); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(outs[0], "netready-image-v1.2.3-linux-amd64.tar"))
	c, _ := os.ReadFile(filepath.Join(out3, "netready-image-v1.2.3-linux-amd64.tar"))
	if bytes.Equal(a, c) {
		t.Error("a different epoch gave the same bytes: the date is not in the image")
	}
}

// TestImageTarballLoads reads each per-arch tarball back as a runtime importer would and checks what
// the DaemonSet relies on: the tag, entrypoint, user, platform, and the binary itself at 0755.
func TestImageTarballLoads(t *testing.T) {
	tmp := t.TempDir()
	bins, content := writeBins(t, tmp)
	out := filepath.Join(tmp, "out")
	if err := run(append([]string{"-version", "v9", "-epoch", "0", "-out", out}, bins...)); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(Repository + ":v9")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range Platforms {
		t.Run(p.Arch, func(t *testing.T) {
			img, err := tarball.ImageFromPath(filepath.Join(out, "netready-image-v9-linux-"+p.Arch+".tar"), &tag)
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cf.OS != "linux" || cf.Architecture != p.Arch || cf.Variant != p.Variant {
				t.Errorf("platform %s/%s/%s, want %s", cf.OS, cf.Architecture, cf.Variant, p)
			}
			if got := strings.Join(cf.Config.Entrypoint, " "); got != BinaryPath {
				t.Errorf("entrypoint %q, want %q", got, BinaryPath)
			}
			if cf.Config.User != User {
				t.Errorf("user %q, want %q", cf.Config.User, User)
			}
			if !cf.Created.Time.Equal(time.Unix(0, 0)) {
				t.Errorf("created %v, want the epoch given", cf.Created.Time)
			}
			layers, err := img.Layers()
			if err != nil || len(layers) != 1 {
				t.Fatalf("want 1 layer, got %d (%v)", len(layers), err)
			}
			rc, err := layers[0].Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			tr := tar.NewReader(rc)
			hdr, err := tr.Next()
			if err != nil {
				t.Fatal(err)
			}
			if "/"+hdr.Name != BinaryPath || hdr.Mode != 0o755 || hdr.Uid != 0 || hdr.Gid != 0 {
				t.Errorf("layer entry %s mode %o owner %d:%d, want %s 755 0:0", hdr.Name, hdr.Mode, hdr.Uid, hdr.Gid, BinaryPath)
			}
			got, _ := io.ReadAll(tr)
			if !bytes.Equal(got, content[p.Arch]) {
				t.Errorf("the layer's binary is not the one given for %s", p.Arch)
			}
			if _, err := tr.Next(); err != io.EOF {
				t.Errorf("the layer holds more than the binary: %v", err)
			}
		})
	}
}

// TestLayoutIndex unpacks the OCI layout tarball and finds one index, named, with the three
// platforms, each manifest being the same image as the per-arch tarball.
func TestLayoutIndex(t *testing.T) {
	tmp := t.TempDir()
	bins, _ := writeBins(t, tmp)
	out := filepath.Join(tmp, "out")
	if err := run(append([]string{"-version", "v9", "-epoch", "0", "-out", out}, bins...)); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tmp, "layout")
	untar(t, filepath.Join(out, "netready-image-v9-oci.tar"), dir)
	root, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("not an OCI layout: %v", err)
	}
	rm, err := root.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(rm.Manifests) != 1 || rm.Manifests[0].Annotations["io.containerd.image.name"] != Repository+":v9" ||
		rm.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "v9" {
		t.Fatalf("index.json: want one entry named %s:v9 (tag v9), got %+v", Repository, rm.Manifests)
	}
	idx, err := root.ImageIndex(rm.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != len(Platforms) {
		t.Fatalf("index has %d manifests, want %d", len(im.Manifests), len(Platforms))
	}
	tag, _ := name.NewTag(Repository + ":v9")
	for i, p := range Platforms {
		d := im.Manifests[i]
		if d.Platform == nil || d.Platform.Architecture != p.Arch || d.Platform.Variant != p.Variant {
			t.Errorf("manifest %d platform %+v, want %s", i, d.Platform, p)
		}
		single, err := tarball.ImageFromPath(filepath.Join(out, "netready-image-v9-linux-"+p.Arch+".tar"), &tag)
		if err != nil {
			t.Fatal(err)
		}
		// The docker-save tarball keeps config and layers, not the OCI manifest: compare those.
		fromIdx, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatalf("%s: manifest %s not readable from the layout: %v", p, d.Digest, err)
		}
		for what, get := range map[string]func(v1.Image) (v1.Hash, error){
			"config": func(i v1.Image) (v1.Hash, error) { return i.ConfigName() },
			"layer": func(i v1.Image) (v1.Hash, error) {
				ls, err := i.Layers()
				if err != nil || len(ls) != 1 {
					return v1.Hash{}, fmt.Errorf("%d layers: %v", len(ls), err)
				}
				return ls[0].Digest()
			},
		} {
			a, errA := get(fromIdx)
			b, errB := get(single)
			if errA != nil || errB != nil || a != b {
				t.Errorf("%s: %s in the index %s (%v), in the tarball %s (%v)", p, what, a, errA, b, errB)
			}
		}
	}
}

func TestRunRejects(t *testing.T) {
	tmp := t.TempDir()
	f := filepath.Join(tmp, "bin")
	os.WriteFile(f, []byte("x"), 0o755)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no bins", []string{"-version", "v", "-epoch", "0", "-out", tmp}, "required"},
		{"unknown arch", []string{"-version", "v", "-epoch", "0", "-out", tmp, "-bin", "s390x=" + f}, `unknown arch "s390x"`},
		{"bad bin flag", []string{"-bin", "amd64"}, "ARCH=FILE"},
		{"empty binary", []string{"-version", "v", "-epoch", "0", "-out", tmp, "-bin", "amd64=" + filepath.Join(tmp, "empty")}, "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "empty binary" {
				os.WriteFile(filepath.Join(tmp, "empty"), nil, 0o755)
			}
			err := run(tc.args)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func untar(t *testing.T, file, dir string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, hdr.Name)
		if hdr.Typeflag == tar.TypeDir {
			os.MkdirAll(p, 0o755)
			continue
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		b, _ := io.ReadAll(tr)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
