package install

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"
)

// ConfExtensions are the file extensions containerd (go-cni) hands to
// libcni.ConfFiles: every file so named in the conf dir is a candidate,
// dot-files included, and only the lexically first is loaded.
var ConfExtensions = []string{".conf", ".conflist", ".json"}

// tempMarker is in the name of every temp file this package writes. A temp
// name ends in ".netready-tmp-<random>", an extension libcni never lists, so
// a half-written file is never a candidate for containerd.
const tempMarker = ".netready-tmp-"

// crashHook, when set (tests only), is called after each step of a write,
// with the step's name; the crash-safety test exits the process there.
var crashHook func(step string)

func step(name string) {
	if crashHook != nil {
		crashHook(name)
	}
}

// ValidateConflist checks a conflist as containerd will load it: it parses
// with libcni.ConfListFromBytes, holds at least one plugin, and each plugin
// type has an executable in one of binDirs (containerd fails every pod whose
// chain names a missing plugin). binDirs are paths as this process sees them.
func ValidateConflist(data []byte, binDirs []string) error {
	l, err := libcni.ConfListFromBytes(data)
	if err != nil {
		return fmt.Errorf("libcni cannot load it: %v", err)
	}
	if len(l.Plugins) == 0 {
		return errors.New("libcni loads it with no plugins")
	}
	var missing []string
	for _, p := range l.Plugins {
		if !pluginPresent(p.Network.Type, binDirs) {
			missing = append(missing, p.Network.Type)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("no executable for plugin type(s) %s in %s", strings.Join(missing, ", "), strings.Join(binDirs, ", "))
	}
	return nil
}

func pluginPresent(typ string, binDirs []string) bool {
	if typ == "" || strings.ContainsRune(typ, '/') {
		return false
	}
	for _, d := range binDirs {
		fi, err := os.Stat(filepath.Join(d, typ)) // follows K3s's symlinks to its multi-call binary
		if err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return true
		}
	}
	return false
}

// WriteConflist puts data at dir/name so that containerd can never read a
// half-written or invalid file there: it writes a temp file in dir whose
// name libcni does not list, fsyncs it, validates what is on disk
// (ValidateConflist), renames it over dir/name and fsyncs dir. On any error
// the temp file is removed and dir/name is as it was. Temp files a killed
// run left behind are removed first.
//
// It returns the file it put in place, as stat'ed before the rename: a stat
// of dir/name after it returns may already see another writer's file (two
// agents in a rolling update), which must not be taken for this one's.
func WriteConflist(dir, name string, data []byte, binDirs []string) (os.FileInfo, error) {
	removeStaleTemps(dir, name)
	tmp, lock, err := writeTemp(dir, name, data, 0o644)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	onDisk, err := os.ReadFile(tmp)
	if err == nil && !bytes.Equal(onDisk, data) {
		err = errors.New("the temp file reads back different bytes")
	}
	if err == nil {
		err = ValidateConflist(onDisk, binDirs)
	}
	step("validated")
	if err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("refusing to put %s in place, %s is unchanged: %v", name, filepath.Join(dir, name), err)
	}
	fi, err := os.Stat(tmp)
	if err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("cannot stat %s: %v", tmp, err)
	}
	return fi, renameSync(tmp, dir, name)
}

// InstallBinary copies src to binDir/name as a new file (0755, fsynced) and
// renames it into place: a running netready keeps its old inode, and a
// runtime exec'ing the path sees either the old binary or the new, whole.
func InstallBinary(src, binDir, name string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("cannot read the binary to install: %v", err)
	}
	removeStaleTemps(binDir, name)
	tmp, lock, err := writeTemp(binDir, name, data, 0o755)
	if err != nil {
		return err
	}
	defer lock.Close()
	return renameSync(tmp, binDir, name)
}

// writeTemp writes data to a fresh temp file in dir, fsyncs it and sets
// mode. The file stays locked (flock) until the caller closes lock, after
// renaming or removing it: removeStaleTemps leaves a locked temp alone, and
// the kernel drops the lock when its holder dies. Its name is unique: two
// writers of one dir (two agents in a rolling update, each perhaps pid 1 in
// its own pid namespace) never share a temp file.
func writeTemp(dir, name string, data []byte, mode os.FileMode) (tmp string, lock *os.File, err error) {
	f, err := createLocked(dir, name)
	if err != nil {
		return "", nil, fmt.Errorf("cannot create a temp file in %s: %v", dir, err)
	}
	tmp = f.Name()
	step("created")
	half := len(data) / 2
	_, err = f.Write(data[:half])
	step("half-written")
	if err == nil {
		_, err = f.Write(data[half:])
	}
	step("written")
	if err == nil {
		err = f.Sync()
	}
	step("synced")
	if err == nil {
		// chmod, not the umask-filtered create mode: the node's umask must not decide.
		err = f.Chmod(mode)
	}
	if err != nil {
		os.Remove(tmp)
		f.Close()
		return "", nil, fmt.Errorf("cannot write %s: %v", tmp, err)
	}
	return tmp, f, nil
}

// createLocked creates a temp file for name in dir and locks it. Another
// writer's removeStaleTemps can take the lock between the create and the
// flock and remove the file; then it has no link left, and a new one is made.
// A file system that cannot flock (none a conf dir is on, but the lock only
// guards the cleanup) gets its temp file unlocked rather than a failed write.
func createLocked(dir, name string) (*os.File, error) {
	for range 5 {
		f, err := os.CreateTemp(dir, "."+name+tempMarker+"*")
		if err != nil {
			return nil, err
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX) != nil {
			return f, nil
		}
		fi, err := f.Stat()
		if err != nil {
			os.Remove(f.Name())
			f.Close()
			return nil, err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Nlink > 0 {
			return f, nil
		}
		f.Close()
	}
	return nil, errors.New("another writer removed each temp file as it was made")
}

// renameSync renames tmp to dir/name and fsyncs dir, so the new name
// survives a power loss.
func renameSync(tmp, dir, name string) error {
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("cannot rename %s into place: %v", tmp, err)
	}
	step("renamed")
	err := syncDir(dir)
	step("dir-synced")
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("cannot fsync %s: %v", dir, err)
	}
	return nil
}

// removeStaleTemps removes the temp files for name in dir that no live
// writer holds: those a killed run left behind. A temp file whose lock it
// cannot take is another writer's, still being written.
func removeStaleTemps(dir, name string) {
	temps, _ := filepath.Glob(filepath.Join(dir, "."+name+tempMarker+"*"))
	for _, p := range temps {
		removeIfUnlocked(p)
	}
}

func removeIfUnlocked(p string) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ELOOP) {
		os.Remove(p) // a symlink: no writer of ours made it
		return
	}
	if err != nil {
		return
	}
	defer f.Close()
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		return // held: a live writer's
	}
	// Still the file that was locked, not one made under its name since.
	held, err := f.Stat()
	if err != nil {
		return
	}
	if now, err := os.Lstat(p); err != nil || !os.SameFile(held, now) {
		return
	}
	os.Remove(p)
}

// FirstConflist returns the path and bytes of the file containerd will load
// from confDir: the lexically first of libcni.ConfFiles with ConfExtensions,
// as go-cni picks it. It returns "", nil, nil when there is none.
func FirstConflist(confDir string) (string, []byte, error) {
	files, err := libcni.ConfFiles(confDir, ConfExtensions)
	if err != nil {
		return "", nil, err
	}
	if len(files) == 0 {
		return "", nil, nil
	}
	sort.Strings(files)
	data, err := os.ReadFile(files[0])
	return files[0], data, err
}

// FirstChainHasNetready loads the first conflist of confDir as go-cni's
// loadFromConfDir does (only *.conflist is parsed as a list; a .conf or
// .json is one plugin) and reports whether netready is in it,
// with the file's path and, when it is not, why.
func FirstChainHasNetready(confDir string) (path string, ok bool, why string) {
	path, data, err := FirstConflist(confDir)
	switch {
	case err != nil:
		return path, false, err.Error()
	case path == "":
		return "", false, "no *.conf, *.conflist or *.json in " + confDir
	}
	if filepath.Ext(path) != ".conflist" {
		c, err := libcni.ConfFromBytes(data)
		if err != nil {
			return path, false, "containerd cannot load it: " + err.Error()
		}
		if c.Network.Type == "netready" {
			return path, true, ""
		}
		return path, false, "it is a single plugin of type " + c.Network.Type
	}
	if _, err := libcni.ConfListFromBytes(data); err != nil {
		return path, false, "containerd cannot load it: " + err.Error()
	}
	if ChainHasNetready(data) {
		return path, true, ""
	}
	return path, false, "its chain is " + chainSummary(data)
}
