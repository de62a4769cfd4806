package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/netready/netready/pkg/agent"
	"github.com/netready/netready/pkg/waitmetrics"
)

// cliAgent is the DaemonSet's long-running mode: binary in place, owned conflist kept in step,
// metrics of the log served; on SIGTERM or SIGINT the owned conflist is removed.
func cliAgent(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	confDir := fs.String("cni-conf-dir", "/var/lib/rancher/k3s/agent/etc/cni/net.d", "the node's CNI conf dir, as mounted")
	binDir := fs.String("cni-bin-dir", "/var/lib/rancher/k3s/data/cni", "the node's CNI bin dir, as mounted")
	confPath := fs.String("config", "", "netready's plugin object (JSON), appended to the primary chain")
	logPath := fs.String("log", defaultLog, "netready's log, read for the metrics ('' for none)")
	metricsAddr := fs.String("metrics-addr", ":9725", "HOST:PORT to serve /metrics on ('' for none)")
	namespaces := fs.Bool("metrics-namespaces", false, "label metrics by pod namespace (one series per namespace)")
	interval := fs.Duration("interval", agent.Interval, "how often the conf dir is checked")
	k3sDataDir := fs.String("k3s-data-dir", "", "fill podWatch (unless the config sets it) from K3s's kubelet credentials: DIR/agent/kubelet.kubeconfig, mounted at that path")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *confPath == "" || fs.NArg() > 0 || *interval <= 0 || *interval > time.Second {
		fmt.Fprintln(stderr, "netready agent: --config FILE is required, no other arguments, --interval in (0, 1s]; see netready help")
		return exitUsage
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil)).With("component", "netready-agent", "version", version)
	plugin, err := os.ReadFile(*confPath)
	if err != nil {
		log.Error("cannot read the config", "path", *confPath, "error", err.Error())
		return exitCannot
	}
	if *k3sDataDir != "" {
		kc, err := os.ReadFile(filepath.Join(*k3sDataDir, "agent", "kubelet.kubeconfig"))
		if err != nil {
			kc = nil
		}
		if p, err := agent.WithK3sPodWatch(plugin, *k3sDataDir, kc); err != nil {
			log.Warn("podWatch is off: a pod deleted while its ADD waits lingers until netready's timeout", "error", err.Error())
		} else {
			plugin = p
		}
	}
	a, err := agent.New(*confDir, *binDir, plugin, log)
	if err != nil {
		log.Error("cannot start", "error", err.Error())
		var ce *agent.ConfigError
		if errors.As(err, &ce) {
			return exitUsage
		}
		return exitCannot
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if *metricsAddr != "" {
		m := waitmetrics.New(*namespaces)
		ln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			log.Error("cannot serve metrics", "addr", *metricsAddr, "error", err.Error())
			return exitCannot
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", m.Handler())
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		log.Info("serving metrics", "addr", ln.Addr().String(), "log", *logPath)
		if *logPath != "" {
			tail := &waitmetrics.Tail{Path: *logPath}
			lastErr := ""
			go tail.Follow(ctx, 500*time.Millisecond, m.ObserveLine, func(err error) {
				if err.Error() != lastErr {
					lastErr = err.Error()
					log.Error("cannot read netready's log", "path", *logPath, "error", lastErr)
				}
			})
		}
	}

	exe, err := os.Executable()
	if err == nil {
		err = a.InstallBinary(exe)
	}
	if err != nil {
		log.Error("cannot install the binary", "dir", *binDir, "error", err.Error())
		return exitCannot
	}
	if err := a.Run(ctx, *interval); err != nil {
		log.Error("stopping", "error", err.Error())
		return exitCannot
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		log.Info("stopped")
	}
	return exitReady
}
