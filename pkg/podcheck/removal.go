package podcheck

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// ErrNetNSRemoved is the cause when the pod's netns goes away while the gate
// waits: the runtime gave up on the sandbox.
var ErrNetNSRemoved = errors.New("the pod's netns was removed while netready waited")

// removalCheckEvery is how often the netns path is looked at. Netlink has no
// event for a netns being unmounted (netready's own sockets keep it alive),
// so this is the one check on a timer: a stat, a few times a second.
const removalCheckEvery = 200 * time.Millisecond

// watchRemoval cancels with ErrNetNSRemoved once path no longer names the
// netns it named at the start. stop ends the watch.
func watchRemoval(path string, cancel func(error)) (stop func(), err error) {
	want, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(removalCheckEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			if !sameFile(want, path) {
				cancel(fmt.Errorf("%w (%s)", ErrNetNSRemoved, path))
				return
			}
		}
	}()
	return func() { close(done); <-finished }, nil
}

func sameFile(want os.FileInfo, path string) bool {
	got, err := os.Stat(path)
	if err != nil {
		return false
	}
	// An unmounted bind mount leaves a plain empty file behind until it is
	// removed: the inode then differs from the netns's.
	a, ok1 := want.Sys().(*syscall.Stat_t)
	b, ok2 := got.Sys().(*syscall.Stat_t)
	return ok1 && ok2 && a.Dev == b.Dev && a.Ino == b.Ino
}
