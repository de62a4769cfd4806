package testbed

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// MountsUnder lists the mount points at or below dir, deepest last (as /proc/self/mountinfo
// orders them: a mount comes after the one it is on).
func MountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mounts []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	return mounts
}

// unescapeMountinfo undoes the octal escapes of mountinfo's fields (\040 for a space, \011 a tab,
// \012 a newline, \134 a backslash).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// UnmountUnder unmounts everything at or below dir, deepest first; a busy mount is detached.
func UnmountUnder(dir string) error {
	for range 10 {
		mounts := MountsUnder(dir)
		if len(mounts) == 0 {
			return nil
		}
		for _, m := range slices.Backward(mounts) {
			if err := unix.Unmount(m, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				unix.Unmount(m, unix.MNT_DETACH)
			}
		}
	}
	if m := MountsUnder(dir); len(m) > 0 {
		return fmt.Errorf("still mounted: %s", strings.Join(m, ", "))
	}
	return nil
}
