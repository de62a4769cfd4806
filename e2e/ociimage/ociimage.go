// Package ociimage writes OCI image-layout tars of static binaries, the images the end-to-end
// tiers import into containerd (standalone, or K3s's through its agent/images dir): no registry,
// no Docker.
package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"
)

// Image is a one-layer image of static binaries.
type Image struct {
	Name       string            // full reference, e.g. localhost/netready-e2e/pause:1
	Files      map[string]string // path in the image -> binary name in the tools dir
	Entrypoint []string
	Cmd        []string
}

// OCI media types (image-spec v1.1), written out to keep this module's imports to what it runs.
const (
	mediaTypeLayout   = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar" // uncompressed: diff ID = digest
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// Write writes img as an OCI image layout in a tar stream (what `ctr images import`
// takes): oci-layout, index.json naming the image (io.containerd.image.name carries the full
// reference, org.opencontainers.image.ref.name the tag), and blobs/sha256/ holding the layer (a
// tar of the files, root-owned, mode 0755), the config and the manifest. tools is the dir of the
// files' sources.
func Write(w io.Writer, img Image, tools string) error {
	// Fixed times: the same binaries give the same digests.
	epoch := time.Unix(0, 0).UTC()

	var layer bytes.Buffer
	lt := tar.NewWriter(&layer)
	for _, path := range slices.Sorted(maps.Keys(img.Files)) {
		data, err := os.ReadFile(filepath.Join(tools, img.Files[path]))
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: path[1:], Mode: 0o755, Size: int64(len(data)), ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := lt.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := lt.Write(data); err != nil {
			return err
		}
	}
	if err := lt.Close(); err != nil {
		return err
	}
	layerDesc := blobDescriptor(mediaTypeLayer, layer.Bytes())

	plat := platform{Architecture: runtime.GOARCH, OS: "linux"}
	config, err := json.Marshal(map[string]any{
		"created":      epoch.Format(time.RFC3339),
		"architecture": plat.Architecture,
		"os":           plat.OS,
		"config": map[string]any{
			"Entrypoint": img.Entrypoint,
			"Cmd":        img.Cmd,
			"Env":        []string{"PATH=/"},
			"WorkingDir": "/",
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{layerDesc.Digest}},
		"history": []map[string]any{{"created": epoch.Format(time.RFC3339), "created_by": "netready e2e"}},
	})
	if err != nil {
		return err
	}
	configDesc := blobDescriptor(mediaTypeConfig, config)

	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeManifest,
		"config":        configDesc,
		"layers":        []descriptor{layerDesc},
	})
	if err != nil {
		return err
	}
	manifestDesc := blobDescriptor(mediaTypeManifest, manifest)
	manifestDesc.Platform = &plat
	manifestDesc.Annotations = map[string]string{
		"io.containerd.image.name":          img.Name,
		"org.opencontainers.image.ref.name": tag(img.Name),
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeLayout,
		"manifests":     []descriptor{manifestDesc},
	})
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blobPath(layerDesc), layer.Bytes()},
		{blobPath(configDesc), config},
		{blobPath(manifestDesc), manifest},
	}
	for _, f := range files {
		if err := add(f.name, f.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

// WriteFile is Write to a file.
func WriteFile(path string, img Image, tools string) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	if err := Write(f, img, tools); err != nil {
		return fmt.Errorf("image %s: %w", img.Name, err)
	}
	return nil
}

func blobDescriptor(mediaType string, data []byte) descriptor {
	sum := sha256.Sum256(data)
	return descriptor{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(data))}
}

func blobPath(d descriptor) string { return "blobs/sha256/" + d.Digest[len("sha256:"):] }

// tag is the part of a reference after its last ':' that follows the last '/' ("latest" if none).
func tag(ref string) string {
	for i := len(ref) - 1; i >= 0 && ref[i] != '/'; i-- {
		if ref[i] == ':' {
			return ref[i+1:]
		}
	}
	return "latest"
}
