// Package podns opens a pod's network namespace once and offers what
// netready does there: sockets made inside it, a netlink view of its links,
// addresses and routes, a watcher of their changes, and notice of its
// removal.
package podns

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/netready/netready/pkg/netstate"
)

// NetNS is a pod's network namespace, named by a path such as
// /var/run/netns/NAME or /proc/PID/ns/net. It is safe for concurrent use.
//
// One OS thread enters the namespace when it is opened and makes every
// socket there: a socket is then one syscall on that thread, with no setns
// in and out per attempt (which cost more than the attempt itself).
//
// Asking that thread is itself two hand-offs between OS threads, and on a
// small VM each costs more than the socket. Sockets that receive nothing
// until they are used (stream and datagram ones) are therefore made in
// batches that grow with each request of the same kind (1, 2, 4, ... up to
// maxBatch): the ready path makes exactly what it uses, and an ADD that waits
// asks the thread once per maxBatch attempts. Raw sockets (ICMP, netlink)
// receive from the moment they exist, so they are made one at a time.
type NetNS struct {
	path  string
	cpath *byte           // path, NUL-terminated, for Gone
	id    fileID          // the namespace opened, to tell when path names it no more
	view  *netstate.NetNS // netlink, its socket made inside the namespace

	mu     sync.RWMutex   // read-held while a request is sent, write-held by Close
	reqs   chan socketReq // nil once closed
	spares spares         // made in a batch, not yet handed out; added to only under mu's read lock
	done   chan struct{}  // closed when the thread's goroutine has returned
}

// maxBatch is the most sockets of one kind made in one request: a waiting
// ADD at the default schedule (25 attempts a second) asks about twice a
// second, and at most maxBatch-1 unused sockets are left for Close.
const maxBatch = 16

type sockKind struct{ domain, typ, proto int }

// spares are sockets made ahead, and the size of the next batch, per kind.
type spares struct {
	sync.Mutex
	fds  map[sockKind][]int
	next map[sockKind]int
}

type socketReq struct {
	kind  sockKind
	n     int
	reply chan socketReply
}

type socketReply struct {
	fds []int
	err error
}

// fileID is what tells one namespace file from another.
type fileID struct{ dev, ino uint64 }

// IsBadNetNS reports whether err says the path is no usable network
// namespace (missing, or not a netns): the runtime's doing, not netready's.
func IsBadNetNS(err error) bool {
	var notExist ns.NSPathNotExistErr
	var notNS ns.NSPathNotNSErr
	return errors.As(err, &notExist) || errors.As(err, &notNS)
}

// Open opens the network namespace at path. When path does not exist, or
// is not a network namespace, the error says so, and errors.As finds an
// ns.NSPathNotExistErr or an ns.NSPathNotNSErr in it (IsBadNetNS).
func Open(path string) (*NetNS, error) {
	h, err := ns.GetNS(path)
	if err != nil {
		var notExist ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		switch {
		case errors.As(err, &notExist):
			return nil, &badNetNS{fmt.Sprintf("netns %s does not exist", path), err}
		case errors.As(err, &notNS):
			return nil, &badNetNS{fmt.Sprintf("netns %s is not a network namespace", path), err}
		}
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	// The thread, the netlink socket and the watchers hold the namespace on
	// their own: the file is needed only to enter it.
	defer h.Close()
	fd := int(h.Fd())
	// GetNS accepts any file on procfs or nsfs: ask the kernel (4.11 or later)
	// what it is.
	if t, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE); err != nil || t != unix.CLONE_NEWNET {
		return nil, &badNetNS{fmt.Sprintf("netns %s is not a network namespace", path), ns.NSPathNotNSErr{}}
	}
	id, errno := statID(fd, nil)
	if errno != 0 {
		return nil, fmt.Errorf("netns %s: %w", path, os.NewSyscallError("statx", errno))
	}
	cpath, err := unix.BytePtrFromString(path)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	n := &NetNS{path: path, cpath: cpath, id: id, reqs: make(chan socketReq), done: make(chan struct{})}
	entered := make(chan error)
	go n.serve(fd, n.reqs, entered)
	if err := <-entered; err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	return n, nil
}

// badNetNS is a path that names no network namespace, in words an operator
// can act on; it unwraps to ns's typed error.
type badNetNS struct {
	msg string
	err error
}

func (e *badNetNS) Error() string { return e.msg }
func (e *badNetNS) Unwrap() error { return e.err }

// serve runs on a locked OS thread that enters the namespace and never
// leaves it. It is never unlocked: when the goroutine returns, the runtime
// ends the thread instead of reusing it, so no other code runs in the pod's
// netns. It starts no goroutine and makes nothing but sockets: first the
// netlink view's (n.view, set before entered is sent), then what Socket
// asks for. It takes reqs as an argument: Close may set n.reqs to nil as
// soon as entered is sent.
func (n *NetNS) serve(nsfd int, reqs <-chan socketReq, entered chan<- error) {
	defer close(n.done)
	runtime.LockOSThread()
	if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
		entered <- os.NewSyscallError("setns", err)
		return
	}
	view, err := netstate.OpenHere()
	if err != nil {
		entered <- err
		return
	}
	n.view = view
	entered <- nil
	for req := range reqs {
		k := req.kind
		fds := make([]int, 0, req.n)
		var err error
		for range req.n {
			// A raw syscall: socket(2) does not block, and the ordinary
			// wrapper would wake the runtime's sysmon thread (see
			// probe/epoll.go).
			fd, _, errno := unix.RawSyscall(unix.SYS_SOCKET, uintptr(k.domain), uintptr(k.typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC), uintptr(k.proto))
			if errno != 0 {
				err = errno
				break
			}
			fds = append(fds, int(fd))
		}
		if len(fds) > 0 {
			err = nil // the one asked for is there; the batch is only shorter
		}
		req.reply <- socketReply{fds, os.NewSyscallError("socket", err)}
	}
}

// Path is the path the namespace was opened at.
func (n *NetNS) Path() string { return n.path }

// Socket creates a socket inside the namespace (probe.Sockets). It is
// fresh, never used, whether it was made now or in an earlier batch.
func (n *NetNS) Socket(domain, typ, proto int) (int, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.reqs == nil {
		return -1, fmt.Errorf("socket: %w", net.ErrClosed)
	}
	k := sockKind{domain, typ, proto}
	if fd, ok := n.spares.take(k); ok {
		return fd, nil
	}
	reply := make(chan socketReply, 1)
	n.reqs <- socketReq{k, n.spares.batch(k), reply}
	r := <-reply
	if r.err != nil {
		return -1, r.err
	}
	n.spares.put(k, r.fds[1:])
	return r.fds[0], nil
}

func (s *spares) take(k sockKind) (int, bool) {
	s.Lock()
	defer s.Unlock()
	fds := s.fds[k]
	if len(fds) == 0 {
		return -1, false
	}
	s.fds[k] = fds[:len(fds)-1]
	return fds[len(fds)-1], true
}

// batch is how many sockets of kind k to make now, and doubles the next.
func (s *spares) batch(k sockKind) int {
	if k.typ != unix.SOCK_STREAM && k.typ != unix.SOCK_DGRAM {
		return 1
	}
	s.Lock()
	defer s.Unlock()
	if s.next == nil {
		s.next = make(map[sockKind]int)
	}
	n := max(1, s.next[k])
	s.next[k] = min(2*n, maxBatch)
	return n
}

func (s *spares) put(k sockKind, fds []int) {
	if len(fds) == 0 {
		return
	}
	s.Lock()
	defer s.Unlock()
	if s.fds == nil {
		s.fds = make(map[sockKind][]int)
	}
	s.fds[k] = append(s.fds[k], fds...)
}

// closeAll closes the sockets never handed out.
func (s *spares) closeAll() {
	s.Lock()
	defer s.Unlock()
	for _, fds := range s.fds {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	s.fds = nil
}

// View is the netlink view of the namespace's links, addresses and routes.
// It is closed with n.
func (n *NetNS) View() *netstate.NetNS { return n.view }

// Watch notifies on changes to links, addresses, routes and neighbours in
// the namespace, as netstate.WatchNetNS does. The caller closes the Watcher.
func (n *NetNS) Watch(notify chan<- struct{}) (*netstate.Watcher, error) {
	return netstate.WatchNetNS(n, notify)
}

// ErrRemoved is the cause when the pod's netns goes away while netready
// waits: the runtime gave up on the sandbox.
var ErrRemoved = errors.New("the pod's netns was removed while netready waited")

// Removed is ErrRemoved, naming the path, once the path no longer names the
// namespace that was opened (Gone), and nil before. Netlink has no event for
// a netns being unmounted (netready's own sockets keep it alive), so a
// waiting gate calls it now and then (gate.Wakeups.Poll).
func (n *NetNS) Removed() error {
	if n.Gone() {
		return fmt.Errorf("%w (%s)", ErrRemoved, n.path)
	}
	return nil
}

// Gone reports whether the path no longer names the namespace that was
// opened. An unmounted bind mount leaves a plain empty file behind until it
// is removed: its inode then differs from the namespace's.
//
// The stat is a raw syscall: a waiting ADD makes it once a second, and the
// ordinary wrapper would wake the runtime's sysmon thread, which then polls
// every 20 µs until the process is idle again (see probe/epoll.go). A path
// under /var/run/netns or /proc does not block.
func (n *NetNS) Gone() bool {
	id, errno := statID(unix.AT_FDCWD, n.cpath)
	return errno != 0 || id != n.id
}

// statID is the fileID of path relative to dirfd, or of dirfd itself when
// path is nil: statx(2) as a raw syscall.
func statID(dirfd int, path *byte) (fileID, unix.Errno) {
	flags := 0
	if path == nil {
		path, flags = &empty[0], unix.AT_EMPTY_PATH
	}
	var st unix.Statx_t
	_, _, errno := unix.RawSyscall6(unix.SYS_STATX, uintptr(dirfd), uintptr(unsafe.Pointer(path)), uintptr(flags), unix.STATX_INO, uintptr(unsafe.Pointer(&st)), 0)
	if errno != 0 {
		return fileID{}, errno
	}
	return fileID{uint64(st.Dev_major)<<32 | uint64(st.Dev_minor), st.Ino}, 0
}

var empty = [1]byte{}

// Close ends the namespace's thread, closes the sockets made ahead and the
// netlink view. Sockets already handed out keep working.
func (n *NetNS) Close() error {
	n.mu.Lock()
	if n.reqs == nil {
		n.mu.Unlock()
		return nil
	}
	close(n.reqs)
	n.reqs = nil
	n.spares.closeAll()
	n.mu.Unlock()
	<-n.done
	n.view.Close()
	return nil
}
