package k3s

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Environment variables that say where K3s comes from.
const (
	// DirEnv names a dir laid out as shared/k3s (xz-compressed binaries, SHA256SUMS). Default:
	// ../shared/k3s beside the repository's root.
	DirEnv = "NETREADY_K3S_DIR"
	// BinEnv names a user's own k3s binary: the stock self-extracting one (it lays out its data
	// dir, shim, runc and CNI plugins itself). It wins over DirEnv.
	BinEnv = "K3S_BIN"
	// CacheEnv names the dir where the compressed files are unpacked once and reused across runs.
	// Default /var/cache/netready-e2e/k3s.
	CacheEnv = "NETREADY_K3S_CACHE"
)

// Dist is a K3s to run: either the unpacked, verified files of a shared/k3s dir, or a stock binary.
type Dist struct {
	K3s   string // the k3s binary (multi-call server, or the stock self-extracting one)
	Stock bool   // K3s lays out its data dir itself; Shim, Runc and CNIDir are empty
	Shim  string // containerd-shim-runc-v2
	Runc  string
	CNI   string // dir holding flannel, bridge, host-local, loopback, portmap, bandwidth, firewall
	From  string // where it came from, for the log
}

// distFiles are the members of SHA256SUMS and the compressed file each comes from.
var distFiles = map[string]string{
	"k3s-v1.35.0-f08deaf":     "k3s-v1.35.0-f08deaf.xz",
	"containerd-shim-runc-v2": "containerd-shim-runc-v2.xz",
	"runc":                    "runc.xz",
}

// FindDist returns the K3s to run, or a reason to skip (no K3s here) as skip, or an error (a K3s
// is there but broken: a checksum that does not match, an unpack that failed).
func FindDist(repoRoot string) (d *Dist, skip string, err error) {
	if bin := os.Getenv(BinEnv); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return nil, "", fmt.Errorf("%s=%s: %w", BinEnv, bin, err)
		}
		return &Dist{K3s: bin, Stock: true, From: BinEnv + "=" + bin}, "", nil
	}
	dir := os.Getenv(DirEnv)
	if dir == "" {
		dir = defaultDir(repoRoot)
	}
	sums, err := os.ReadFile(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		return nil, fmt.Sprintf("no K3s: %s has no SHA256SUMS (%v); set %s to a dir laid out like shared/k3s, or %s to a k3s binary", dir, err, DirEnv, BinEnv), nil
	}
	cache := os.Getenv(CacheEnv)
	if cache == "" {
		cache = "/var/cache/netready-e2e/k3s"
	}
	sum := sha256.Sum256(sums)
	target := filepath.Join(cache, hex.EncodeToString(sum[:8]))
	d = &Dist{
		K3s:  filepath.Join(target, "k3s-v1.35.0-f08deaf"),
		Shim: filepath.Join(target, "containerd-shim-runc-v2"),
		Runc: filepath.Join(target, "runc"),
		CNI:  filepath.Join(target, "cni"),
		From: dir,
	}
	if _, err := os.Stat(filepath.Join(target, ".verified")); err == nil {
		return d, "", nil
	}
	if err := unpack(dir, target, sums); err != nil {
		return nil, "", fmt.Errorf("unpacking K3s from %s into %s: %w", dir, target, err)
	}
	return d, "", nil
}

// defaultDir is ../shared/k3s beside the repository; in a git worktree without one, beside the
// main checkout the worktree belongs to.
func defaultDir(repoRoot string) string {
	dir := filepath.Join(filepath.Dir(repoRoot), "shared", "k3s")
	if _, err := os.Stat(dir); err == nil {
		return dir
	}
	cmd := exec.Command("git", "rev-parse", "--path-format=absolute", "--git-common-dir")
	cmd.Dir = repoRoot
	if out, err := cmd.Output(); err == nil {
		main := filepath.Dir(strings.TrimSpace(string(out))) // <main checkout>/.git -> <main checkout>
		if alt := filepath.Join(filepath.Dir(main), "shared", "k3s"); alt != dir {
			if _, err := os.Stat(alt); err == nil {
				return alt
			}
		}
	}
	return dir
}

// unpack decompresses dir's files into a temp dir beside target, checks every SHA256SUMS entry,
// and renames the dir into place: a killed unpack never leaves a half-verified cache.
func unpack(dir, target string, sums []byte) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(target), ".unpack-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for name, xz := range distFiles {
		if err := run(tmp, "sh", "-c", fmt.Sprintf("xz -dc %q > %q && chmod 0755 %q", filepath.Join(dir, xz), name, name)); err != nil {
			return err
		}
	}
	if err := run(tmp, "tar", "-xJf", filepath.Join(dir, "cni-plugins.tar.xz")); err != nil {
		return err
	}
	if err := verify(tmp, sums); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".verified"), sums, 0o644); err != nil {
		return err
	}
	os.RemoveAll(target) // a stale, unverified one
	return os.Rename(tmp, target)
}

// verify checks each "<hex>  <name>" line of sums against the file name in dir.
func verify(dir string, sums []byte) error {
	s := bufio.NewScanner(strings.NewReader(string(sums)))
	n := 0
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 {
			return fmt.Errorf("SHA256SUMS: malformed line %q (want \"<sha256>  <file>\")", s.Text())
		}
		got, err := fileSHA256(filepath.Join(dir, f[1]))
		if err != nil {
			return err
		}
		if got != f[0] {
			return fmt.Errorf("%s: sha256 %s, SHA256SUMS says %s: the file is corrupt or not the one listed", f[1], got, f[0])
		}
		n++
	}
	if n == 0 {
		return errors.New("SHA256SUMS lists no file")
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func run(dir, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
