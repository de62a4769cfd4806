package install

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Service is how K3s is run on this node, and so how to restart it.
type Service struct {
	Kind    string   // "systemd", "openrc" or "" (neither: started by hand, a container, a test)
	Name    string   // "k3s" or "k3s-agent"
	Restart []string // the command that restarts it; nil for Kind ""
}

// Command is the restart command as one line to print, or, with no service
// manager, the plain instruction to restart K3s the way it was started.
func (s Service) Command(k *K3s) string {
	if s.Restart != nil {
		return strings.Join(s.Restart, " ")
	}
	if k != nil {
		return fmt.Sprintf("stop k3s (pid %d) and start it again as it was started: %s", k.PID, strings.Join(k.Args, " "))
	}
	return "systemctl restart k3s (k3s-agent on an agent; rc-service k3s restart on OpenRC)"
}

// DetectService decides how the K3s process k runs: under systemd when its
// cgroup names a k3s unit, under OpenRC when OpenRC runs and has a k3s
// service script, else neither. With no K3s running it looks for a service
// that would start it.
func DetectService(root string, k *K3s) Service {
	name := "k3s"
	if k != nil && k.Role == "agent" {
		name = "k3s-agent"
	}
	if k != nil && k.Unit != "" {
		unit := strings.TrimSuffix(k.Unit, ".service")
		return Service{Kind: "systemd", Name: unit, Restart: []string{"systemctl", "restart", unit}}
	}
	at := func(p string) string { return filepath.Join(root, p) }
	openrc := exists(at("/run/openrc"))
	for _, n := range []string{name, "k3s", "k3s-agent"} {
		if openrc && exists(at("/etc/init.d/"+n)) {
			return Service{Kind: "openrc", Name: n, Restart: []string{"rc-service", n, "restart"}}
		}
	}
	if k == nil && exists(at("/run/systemd/system")) {
		for _, n := range []string{"k3s", "k3s-agent"} {
			for _, d := range []string{"/etc/systemd/system/", "/lib/systemd/system/", "/usr/lib/systemd/system/"} {
				if exists(at(d + n + ".service")) {
					return Service{Kind: "systemd", Name: n, Restart: []string{"systemctl", "restart", n}}
				}
			}
		}
	}
	return Service{Name: name}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
