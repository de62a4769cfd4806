// Command image writes netready's container images without a container engine: the static binary
// on an empty base, one OCI image per architecture, as tarballs `ctr images import` and
// `docker load` read, and one OCI layout tarball holding the multi-arch index.
//
// It is a module of its own so that go-containerregistry's dependencies stay out of the plugin's
// go.mod: the binary that runs on every ADD links none of this.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// BinaryPath is where the binary sits in the image; the agent copies this file (its own
	// executable) into the node's CNI bin dir.
	BinaryPath = "/netready"
	// User is the image's default user: nobody's usual uid/gid in distroless images. The binary's
	// tools (`stats`, `explain`, `version`) need no privilege. The DaemonSet runs the agent as uid
	// 0 on purpose (see deploy/), because the node's CNI dirs are root's, 0755.
	User = "65532:65532"
	// Repository is the image's default name; the DaemonSet refers to it with
	// imagePullPolicy IfNotPresent, so an imported image is used as is.
	Repository = "docker.io/netready/netready"
)

// Platform is one architecture the image is built for.
type Platform struct {
	Arch    string // GOARCH: amd64, arm64, arm
	Variant string // "v7" for arm (GOARM=7), else empty
}

// Platforms are the architectures `make dist` builds, in that order.
var Platforms = []Platform{{Arch: "amd64"}, {Arch: "arm64"}, {Arch: "arm", Variant: "v7"}}

// String is the platform as OCI writes it: linux/arm/v7.
func (p Platform) String() string {
	if p.Variant != "" {
		return "linux/" + p.Arch + "/" + p.Variant
	}
	return "linux/" + p.Arch
}

// Build returns the image for one platform: a single layer holding bin at BinaryPath (mode 0755,
// owned by 0:0), dated created, with OCI media types. The same inputs give the same digest.
func Build(bin []byte, p Platform, version string, created time.Time) (v1.Image, error) {
	if len(bin) == 0 {
		return nil, errors.New("image: the binary is empty")
	}
	layerTar, err := layerTar(bin, created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("image: layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: "netready packaging/image: COPY netready " + BinaryPath,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("image: append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image: config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = p.Arch
	cf.Variant = p.Variant
	cf.Created = v1.Time{Time: created}
	cf.Config.Entrypoint = []string{BinaryPath}
	cf.Config.Cmd = []string{"help"}
	cf.Config.User = User
	cf.Config.WorkingDir = "/"
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":   "netready",
		"org.opencontainers.image.version": version,
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("image: set config: %w", err)
	}
	return img, nil
}

// layerTar is the layer's uncompressed tar: one regular file, dated created, owned by 0:0.
func layerTar(bin []byte, created time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     BinaryPath[1:],
		Mode:     0o755,
		Size:     int64(len(bin)),
		ModTime:  created,
		Format:   tar.FormatUSTAR,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, fmt.Errorf("image: layer tar: %w", err)
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, fmt.Errorf("image: layer tar: %w", err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("image: layer tar: %w", err)
	}
	return buf.Bytes(), nil
}

// Index is the multi-arch index of imgs (in the order of ps), OCI media type.
func Index(imgs []v1.Image, ps []Platform) (v1.ImageIndex, error) {
	if len(imgs) != len(ps) {
		return nil, fmt.Errorf("image: %d images for %d platforms", len(imgs), len(ps))
	}
	adds := make([]mutate.IndexAddendum, len(imgs))
	for i, img := range imgs {
		adds[i] = mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			MediaType: types.OCIManifestSchema1,
			Platform:  &v1.Platform{OS: "linux", Architecture: ps[i].Arch, Variant: ps[i].Variant},
		}}
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	return mutate.AppendManifests(idx, adds...), nil
}

// WriteImageTar writes img as a tarball (docker-save layout plus OCI manifests) tagged ref.
func WriteImageTar(path, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image: tag %q: %w", ref, err)
	}
	return writeAtomic(path, func(w io.Writer) error { return tarball.Write(tag, img, w) })
}

// WriteLayoutTar writes idx as an OCI image layout, named ref (a full reference), packed into a tarball with sorted
// entries, every date set to created and every owner 0:0, so the same index gives the same bytes.
func WriteLayoutTar(path, ref string, idx v1.ImageIndex, created time.Time) error {
	dir, err := os.MkdirTemp("", "netready-image-layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("image: layout: %w", err)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image: tag %q: %w", ref, err)
	}
	// containerd's importer names the image from io.containerd.image.name (the full reference);
	// the OCI annotation holds the tag, as the image-spec describes it.
	if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name":          ref,
		"org.opencontainers.image.ref.name": tag.TagStr(),
	})); err != nil {
		return fmt.Errorf("image: layout: %w", err)
	}
	return writeAtomic(path, func(w io.Writer) error { return tarDir(w, dir, created) })
}

// tarDir packs dir's regular files and directories, sorted by path.
func tarDir(w io.Writer, dir string, created time.Time) error {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: filepath.ToSlash(rel), ModTime: created, Format: tar.FormatPAX}
		switch {
		case fi.IsDir():
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, hdr.Name+"/", 0o755
		case fi.Mode().IsRegular():
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, 0o644, fi.Size()
		default:
			return fmt.Errorf("image: layout holds %s, neither file nor directory", p)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// writeAtomic writes path through a temporary name in the same directory, so a failed run never
// leaves a truncated tarball under the final name.
func writeAtomic(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("image: write %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
