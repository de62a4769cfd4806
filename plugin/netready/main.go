// Command netready is a chained CNI plugin whose ADD returns only when the
// pod's network really works. Without CNI_COMMAND it is a tool for operators.
package main

import (
	"os"
	"runtime"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	cniversion "github.com/containernetworking/cni/pkg/version"
)

// version is stamped at build time: -ldflags "-X main.version=...".
var version = "dev"

// supported lists the CNI versions netready speaks; it answers in the list's.
var supported = cniversion.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

func main() {
	// ADD's timeout counts from here: the runtime's clock started when it
	// exec'd us, and what came before us in the chain is not ours to spend.
	p := &plugin{start: time.Now(), stderr: os.Stderr}
	if os.Getenv("CNI_COMMAND") == "" {
		os.Exit(runCLI(os.Args[1:], os.Stdout, os.Stderr))
	}
	// One P: a plugin invocation waits on sockets and timers and computes
	// next to nothing, and with a second P each wake-up hands work between
	// threads. The runtime's GOMAXPROCS variable, when set, still decides.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	// skel checks after ADD and DEL that CNI_NETNS is not the plugin's own
	// netns, by opening /proc/PID/task/TID/ns/net, which makes every
	// invocation costlier for the runtime to reap (internal/threadns).
	// netready makes that check itself for ADD and CHECK, before it waits
	// (notOwnNetNS); its DEL touches no netns and always succeeds.
	os.Setenv("CNI_NETNS_OVERRIDE", "1")
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    p.add,
		Del:    p.del,
		Check:  p.check,
		Status: p.status,
		GC:     p.gc,
	}, supported, "netready "+version+": a chained CNI plugin that holds ADD until the pod's network works")
}
