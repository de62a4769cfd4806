// Command pause is the pause image's process in the containerd and K3s tiers: it holds the pod's
// namespaces and sleeps until SIGTERM or SIGINT. As PID 1 of its PID namespace it gets no default
// signal handling from the kernel, so it must catch the signals itself, or containerd's
// StopPodSandbox would wait for its grace period and then SIGKILL it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
