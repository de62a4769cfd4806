package install

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// fakeProc adds a process to root/proc.
func fakeProc(t *testing.T, root string, pid int, args []string, env []string, cgroup string) {
	t.Helper()
	d := filepath.Join(root, "proc", strconv.Itoa(pid))
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(d, "cmdline"), []byte(strings.Join(args, "\x00")+"\x00"), 0o644)
	os.WriteFile(filepath.Join(d, "environ"), []byte(strings.Join(env, "\x00")), 0o644)
	os.WriteFile(filepath.Join(d, "cgroup"), []byte(cgroup), 0o644)
}

func TestFindK3s(t *testing.T) {
	tests := []struct {
		name        string
		args        []string
		env         []string
		cgroup      string
		files       map[string]string
		wantRole    string // "" = not found
		wantDataDir string
		wantFrom    string
		wantUnit    string
	}{
		{name: "server under systemd", args: []string{"/usr/local/bin/k3s", "server"}, cgroup: "0::/system.slice/k3s.service\n",
			wantRole: "server", wantDataDir: DefaultDataDir, wantFrom: "K3s's default", wantUnit: "k3s.service"},
		{name: "agent, retitled by k3s", args: []string{"/usr/local/bin/k3s agent"}, wantRole: "agent", wantDataDir: DefaultDataDir},
		{name: "started by hand with --data-dir", args: []string{"k3s", "server", "--data-dir", "/srv/k3s"}, wantRole: "server", wantDataDir: "/srv/k3s", wantFrom: "its --data-dir flag"},
		{name: "-d=", args: []string{"/bin/k3s", "server", "-d=/data"}, wantRole: "server", wantDataDir: "/data"},
		{name: "data-dir in config.yaml", args: []string{"k3s", "server"},
			files: map[string]string{DefaultK3sConfig: "write-kubeconfig-mode: \"0644\"\ndata-dir: \"/opt/k3s\" # moved\n"}, wantRole: "server", wantDataDir: "/opt/k3s", wantFrom: DefaultK3sConfig},
		{name: "a drop-in overrides config.yaml", args: []string{"k3s", "agent"},
			files: map[string]string{DefaultK3sConfig: "data-dir: /a\n", DefaultK3sConfig + ".d/50-x.yaml": "data-dir: /b\n"}, wantRole: "agent", wantDataDir: "/b"},
		{name: "--config elsewhere", args: []string{"k3s", "server", "--config", "/etc/k3s.yaml"},
			files: map[string]string{"/etc/k3s.yaml": "data-dir: /c\n", DefaultK3sConfig: "data-dir: /ignored\n"}, wantRole: "server", wantDataDir: "/c"},
		{name: "K3S_CONFIG_FILE", args: []string{"k3s", "server"}, env: []string{"K3S_CONFIG_FILE=/etc/k.yaml"},
			files: map[string]string{"/etc/k.yaml": "'data-dir': /e\n"}, wantRole: "server", wantDataDir: "/e"},
		{name: "a flag beats the config", args: []string{"k3s", "server", "--data-dir=/f"}, files: map[string]string{DefaultK3sConfig: "data-dir: /no\n"}, wantRole: "server", wantDataDir: "/f"},
		{name: "K3s's staged k3s-agent", args: []string{"/var/lib/rancher/k3s/data/abc/bin/k3s-agent", "agent", "--data-dir=/x"}, wantRole: "agent", wantDataDir: "/x"},
		{name: "k3s kubectl is not K3s", args: []string{"k3s", "kubectl", "get", "pods"}},
		{name: "containerd is not K3s", args: []string{"containerd", "-c", "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"}},
		{name: "k3s-something server", args: []string{"/usr/bin/k3sx", "server"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			fakeProc(t, root, 1, []string{"/sbin/init"}, nil, "")
			fakeProc(t, root, 123, tt.args, tt.env, tt.cgroup)
			for p, c := range tt.files {
				os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
				os.WriteFile(filepath.Join(root, p), []byte(c), 0o644)
			}
			k := FindK3s(root)
			if tt.wantRole == "" {
				if k != nil {
					t.Fatalf("found %+v; want none", k)
				}
				return
			}
			if k == nil {
				t.Fatal("found no k3s")
			}
			if k.PID != 123 || k.Role != tt.wantRole || k.DataDir != tt.wantDataDir || k.Unit != tt.wantUnit {
				t.Errorf("got pid %d role %q data-dir %q unit %q; want 123 %q %q %q", k.PID, k.Role, k.DataDir, k.Unit, tt.wantRole, tt.wantDataDir, tt.wantUnit)
			}
			if tt.wantFrom != "" && k.DataDirFrom != tt.wantFrom {
				t.Errorf("data-dir from %q; want %q", k.DataDirFrom, tt.wantFrom)
			}
		})
	}
}

func TestFindK3sThisMachine(t *testing.T) {
	// Reads the real /proc: whatever runs here, it must not panic, and a
	// K3s it finds has a role and an absolute data-dir.
	if k := FindK3s(""); k != nil && (k.Role == "" || !filepath.IsAbs(k.DataDir)) {
		t.Fatalf("found %+v", k)
	}
}

func TestPathsFor(t *testing.T) {
	tests := []struct {
		name     string
		dirs     []string
		dataDir  string
		binDir   string
		wantBin  string
		wantBins []string
		wantNote bool
	}{
		{name: "recent K3s", dirs: []string{"/var/lib/rancher/k3s/data/cni", "/var/lib/rancher/k3s/data/current/bin"}, dataDir: DefaultDataDir,
			wantBin: "/var/lib/rancher/k3s/data/cni", wantBins: []string{"/var/lib/rancher/k3s/data/cni", "/var/lib/rancher/k3s/data/current/bin"}},
		{name: "older K3s", dirs: []string{"/var/lib/rancher/k3s/data/current/bin"}, dataDir: DefaultDataDir,
			wantBin: "/var/lib/rancher/k3s/data/current/bin", wantBins: []string{"/var/lib/rancher/k3s/data/current/bin"}, wantNote: true},
		{name: "no K3s yet", dataDir: DefaultDataDir, wantBin: "/var/lib/rancher/k3s/data/cni", wantBins: []string{"/var/lib/rancher/k3s/data/cni"}},
		{name: "custom data-dir", dirs: []string{"/srv/k3s/data/cni"}, dataDir: "/srv/k3s", wantBin: "/srv/k3s/data/cni", wantBins: []string{"/srv/k3s/data/cni"}},
		{name: "--bin-dir", dirs: []string{"/var/lib/rancher/k3s/data/cni"}, dataDir: DefaultDataDir, binDir: "/opt/cni/bin",
			wantBin: "/opt/cni/bin", wantBins: []string{"/opt/cni/bin", "/var/lib/rancher/k3s/data/cni"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for _, d := range tt.dirs {
				os.MkdirAll(filepath.Join(root, d), 0o755)
			}
			p := PathsFor(root, tt.dataDir, tt.binDir)
			if p.BinDir != tt.wantBin || strings.Join(p.BinDirs, " ") != strings.Join(tt.wantBins, " ") || (p.Note != "") != tt.wantNote {
				t.Errorf("got %+v; want bin %s, bins %v, note %v", p, tt.wantBin, tt.wantBins, tt.wantNote)
			}
			if p.ConfDir != filepath.Join(tt.dataDir, "agent/etc/cni/net.d") {
				t.Errorf("conf dir %s", p.ConfDir)
			}
		})
	}
}

func TestDetectService(t *testing.T) {
	tests := []struct {
		name  string
		k     *K3s
		files []string
		want  string // the restart command, or the start of the plain instruction
	}{
		{name: "systemd server", k: &K3s{PID: 7, Role: "server", Unit: "k3s.service"}, want: "systemctl restart k3s"},
		{name: "systemd agent", k: &K3s{PID: 7, Role: "agent", Unit: "k3s-agent.service"}, want: "systemctl restart k3s-agent"},
		{name: "OpenRC agent", k: &K3s{PID: 7, Role: "agent"}, files: []string{"/run/openrc/softlevel", "/etc/init.d/k3s-agent"}, want: "rc-service k3s-agent restart"},
		{name: "neither", k: &K3s{PID: 7, Role: "server", Args: []string{"k3s", "server", "--disable=traefik"}}, want: "stop k3s (pid 7) and start it again as it was started: k3s server --disable=traefik"},
		{name: "an init script without OpenRC running", k: &K3s{PID: 7, Role: "server", Args: []string{"k3s", "server"}}, files: []string{"/etc/init.d/k3s"}, want: "stop k3s (pid 7)"},
		{name: "not running, systemd unit", files: []string{"/run/systemd/system/x", "/etc/systemd/system/k3s-agent.service"}, want: "systemctl restart k3s-agent"},
		{name: "not running, nothing", want: "systemctl restart k3s (k3s-agent on an agent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for _, f := range tt.files {
				os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755)
				os.WriteFile(filepath.Join(root, f), nil, 0o755)
			}
			s := DetectService(root, tt.k)
			if got := s.Command(tt.k); !strings.HasPrefix(got, tt.want) {
				t.Errorf("command %q; want %q", got, tt.want)
			}
		})
	}
}
