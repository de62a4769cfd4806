package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const usage = `usage: go run ./packaging/image -version V -epoch SECONDS -out DIR -bin ARCH=FILE ...

Writes, for each -bin (ARCH is amd64, arm64 or arm; arm means armv7):
  DIR/netready-image-V-linux-ARCH.tar   one image, for ctr images import / docker load
  DIR/netready-image-V-oci.tar          an OCI layout holding the multi-arch index of them all
and prints each image's digest. -epoch dates everything (SOURCE_DATE_EPOCH), so the same
binaries give the same bytes.
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

type binFlags map[string]string

func (b binFlags) String() string { return fmt.Sprint(map[string]string(b)) }
func (b binFlags) Set(s string) error {
	arch, file, ok := strings.Cut(s, "=")
	if !ok || arch == "" || file == "" {
		return fmt.Errorf("want ARCH=FILE, got %q", s)
	}
	b[arch] = file
	return nil
}

func run(args []string) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage) }
	version := fs.String("version", "", "image tag (the release version)")
	epoch := fs.Int64("epoch", -1, "seconds since 1970 for every date in the image")
	out := fs.String("out", "", "output directory")
	bins := binFlags{}
	fs.Var(bins, "bin", "ARCH=FILE, repeatable")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version == "" || *epoch < 0 || *out == "" || len(bins) == 0 {
		fs.Usage()
		return fmt.Errorf("-version, -epoch, -out and at least one -bin are required")
	}
	created := time.Unix(*epoch, 0).UTC()
	ref := Repository + ":" + *version
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	var imgs []v1.Image
	var ps []Platform
	for _, p := range Platforms {
		file, ok := bins[p.Arch]
		if !ok {
			continue
		}
		delete(bins, p.Arch)
		bin, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		img, err := Build(bin, p, *version, created)
		if err != nil {
			return err
		}
		path := filepath.Join(*out, fmt.Sprintf("netready-image-%s-linux-%s.tar", *version, p.Arch))
		if err := WriteImageTar(path, ref, img); err != nil {
			return err
		}
		d, err := img.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("%-14s %s %s\n", p, d, path)
		imgs, ps = append(imgs, img), append(ps, p)
	}
	for arch := range bins {
		return fmt.Errorf("unknown arch %q (want amd64, arm64 or arm)", arch)
	}
	idx, err := Index(imgs, ps)
	if err != nil {
		return err
	}
	path := filepath.Join(*out, fmt.Sprintf("netready-image-%s-oci.tar", *version))
	if err := WriteLayoutTar(path, ref, idx, created); err != nil {
		return err
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%-14s %s %s\n", "index", d, path)
	return nil
}
