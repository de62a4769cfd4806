// Command minwait is the least a waiting chained plugin can cost: the floor under the bench's
// idle_one figure on the machine it runs on. Its ADD enters the pod's netns and, every 40 ms (a
// periodic timerfd, as netready's leader probes at its full schedule), sends one SYN to the
// config's first tcp:// probe from one non-blocking socket, disconnected and connected again each
// time; when one connects it prints prevResult and exits. No gate, no log, no coordination, no node events.
// Measured in netready's place:
//
//	go build -o /tmp/minwait ./e2e/bench/minwait
//	go run ./e2e/bench -only idleone -netready /tmp/minwait
//
// It is a measuring tool, not a plugin to deploy: it waits forever when the probe never answers.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"runtime"
	"time"
	"unsafe"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"golang.org/x/sys/unix"
)

const tick = 40 * time.Millisecond

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:   add,
		Del:   func(*skel.CmdArgs) error { return nil },
		Check: func(*skel.CmdArgs) error { return nil },
	}, version.All, "minwait: one SYN per 40 ms until the probe answers (a bench floor)")
}

func add(args *skel.CmdArgs) error {
	var conf struct {
		types.NetConf
		Probes []string `json:"probes"`
	}
	if err := json.Unmarshal(args.StdinData, &conf); err != nil {
		return err
	}
	if len(conf.Probes) == 0 {
		return errors.New("minwait: no probe")
	}
	u, err := url.Parse(conf.Probes[0])
	if err != nil || u.Scheme != "tcp" {
		return fmt.Errorf("minwait: %q is not a tcp:// probe", conf.Probes[0])
	}
	target, err := netip.ParseAddrPort(u.Host)
	if err != nil || !target.Addr().Is4() {
		return fmt.Errorf("minwait: %q: an IPv4 address and port: %v", u.Host, err)
	}
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return err
	}
	podNS, err := os.Open(args.Netns)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, in the pod's netns, ends with this goroutine.
		runtime.LockOSThread()
		if err := unix.Setns(int(podNS.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("minwait: setns: %w", err)
			return
		}
		done <- waitSYN(target)
	}()
	if err := <-done; err != nil {
		return err
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return err
	}
	return types.PrintResult(prev, conf.CNIVersion)
}

// waitSYN sends a SYN to target every tick until one connects: a blocking read of the timerfd
// (one the runtime knows of, so that sysmon does not preempt it), then raw syscalls only: the
// last attempt's poll and SO_ERROR, a disconnect and a connect.
func waitSYN(target netip.AddrPort) error {
	tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
	if err != nil {
		return err
	}
	its := unix.ItimerSpec{Interval: unix.NsecToTimespec(int64(tick)), Value: unix.NsecToTimespec(1)}
	if err := unix.TimerfdSettime(tfd, 0, &its, nil); err != nil {
		return err
	}
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: target.Addr().As4()}
	port := target.Port()
	sa.Port = port>>8 | port<<8 // network byte order
	fd, _, e := unix.RawSyscall(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return e
	}
	var unspec unix.RawSockaddrAny // Family 0: AF_UNSPEC
	var n uint64
	for tries := 0; ; tries++ {
		if _, _, e := unix.Syscall(unix.SYS_READ, uintptr(tfd), uintptr(unsafe.Pointer(&n)), 8); e != 0 && e != unix.EINTR {
			return e
		}
		if tries > 0 {
			pfd := unix.PollFd{Fd: int32(fd), Events: unix.POLLOUT}
			r, _, _ := unix.RawSyscall(unix.SYS_POLL, uintptr(unsafe.Pointer(&pfd)), 1, 0)
			var soErr int32
			l := uint32(4)
			_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_ERROR, uintptr(unsafe.Pointer(&soErr)), uintptr(unsafe.Pointer(&l)), 0)
			if r == 1 && pfd.Revents&unix.POLLOUT != 0 && e == 0 && soErr == 0 {
				unix.RawSyscall(unix.SYS_CLOSE, fd, 0, 0)
				return nil // connected
			}
			// The same socket again, as netready's probe reuses its sockets: a connect to
			// AF_UNSPEC takes it back to CLOSE.
			unix.RawSyscall(unix.SYS_CONNECT, fd, uintptr(unsafe.Pointer(&unspec)), unsafe.Sizeof(unspec))
		}
		unix.RawSyscall(unix.SYS_CONNECT, fd, uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	}
}
