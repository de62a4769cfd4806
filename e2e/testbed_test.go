// Package e2e runs CNI chains in simulated K3s nodes (see e2e/testbed). Its tests need root.
package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/netready/netready/e2e/testbed"
)

func TestMain(m *testing.M) { os.Exit(testbed.Main(m)) }

// TestK3sChain runs the chain K3s writes, without netready, through libcni as containerd does,
// at the cniVersion K3s writes today, an older one, and the one that reaches STATUS and GC.
func TestK3sChain(t *testing.T) {
	for _, tc := range []struct {
		cniVersion    string
		check, status bool // what libcni sends at that version
	}{
		{cniVersion: "0.3.1"},
		{cniVersion: "1.0.0", check: true},
		{cniVersion: "1.1.0", check: true, status: true},
	} {
		t.Run(tc.cniVersion, func(t *testing.T) {
			t.Parallel()
			rootForward := readRootForward(t)
			ctx := testContext(t)
			b := testbed.New(t)
			list := confList(t, b, testbed.K3sConflist(tc.cniVersion))
			pod := newPod(t, b)

			res, err := b.Add(ctx, list, pod)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			addr := podAddr(t, res, false)
			t.Logf("pod %s got %s", pod.Name, addr)
			if !testbed.PodCIDR.Contains(addr.Addr()) || addr.Bits() != testbed.PodCIDR.Bits() {
				t.Errorf("pod address %s, want one in %s", addr, testbed.PodCIDR)
			}
			checkPodNetns(t, pod, addr.Addr())
			checkDelegate(t, b, pod, tc.cniVersion)

			if err := connect(ctx, pod, testbed.DBTCP, time.Second); err != nil {
				t.Fatalf("pod -> db TCP with the path open: %v", err)
			}
			fault, err := b.BlockRouter(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := connect(ctx, pod, testbed.DBTCP, 300*time.Millisecond); err == nil {
				t.Errorf("pod -> db TCP through the nft block: connected, want a timeout")
			}
			if _, err := fault.Unblock(); err != nil {
				t.Fatal(err)
			}
			if err := connect(ctx, pod, testbed.DBTCP, time.Second); err != nil {
				t.Errorf("pod -> db TCP after unblock: %v", err)
			}

			if tc.check {
				if err := b.Check(ctx, list, pod); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			if tc.status {
				if err := b.Status(ctx, list); err != nil {
					t.Errorf("STATUS: %v", err)
				}
				// GC keeping pod: a second, orphaned attachment must be DELeted by libcni.
				orphan := newPod(t, b)
				if _, err := b.Add(ctx, list, orphan); err != nil {
					t.Fatalf("ADD orphan: %v", err)
				}
				if err := b.GC(ctx, list, pod); err != nil {
					t.Errorf("GC: %v", err)
				}
				assertGone(t, filepath.Join(b.FlannelDir, orphan.ContainerID))
				assertExists(t, filepath.Join(b.FlannelDir, pod.ContainerID))
				if hasLink(t, orphan, "eth0") {
					t.Errorf("GC left the orphan's eth0 in place")
				}
			}

			if err := b.Del(ctx, list, pod); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if hasLink(t, pod, "eth0") {
				t.Errorf("DEL left eth0 in the pod")
			}
			assertGone(t, filepath.Join(b.FlannelDir, pod.ContainerID))
			assertGone(t, filepath.Join(b.IPAMDir, "cbr0", addr.Addr().String()))
			if err := b.Del(ctx, list, pod); err != nil {
				t.Errorf("second DEL (must be idempotent): %v", err)
			}

			assertRootUntouched(t, rootForward)
		})
	}
}

// TestDualStack: with FLANNEL_IPV6_* in subnet.env, the pod gets both families and reaches the
// db over IPv6 too.
func TestDualStack(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := testbed.New(t, testbed.Options{DualStack: true})
	list := confList(t, b, testbed.K3sConflist("1.0.0"))
	pod := newPod(t, b)
	res, err := b.Add(ctx, list, pod)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if a := podAddr(t, res, true); !testbed.PodCIDR6.Contains(a.Addr()) {
		t.Errorf("pod IPv6 address %s, want one in %s", a, testbed.PodCIDR6)
	}
	for _, target := range []netip.AddrPort{testbed.DBTCP, testbed.DBTCP6} {
		if err := connect(ctx, pod, target, 2*time.Second); err != nil {
			t.Errorf("pod -> %s: %v", target, err)
		}
	}
}

// TestServers: the db answers HTTP and DNS from a pod.
func TestServers(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := testbed.New(t)
	pod := newPod(t, b)
	if _, err := b.Add(ctx, confList(t, b, testbed.K3sConflist("1.0.0")), pod); err != nil {
		t.Fatalf("ADD: %v", err)
	}

	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: pod.Dial}}
	resp, err := client.Get("http://" + testbed.DBHTTP.String() + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	resp.Body.Close()
	client.CloseIdleConnections()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz: %s, want 200", resp.Status)
	}

	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return pod.Dial(ctx, network, testbed.DBDNS.String())
	}}
	for network, want := range map[string]netip.Addr{"ip4": testbed.DBAddr, "ip6": testbed.DBAddr6} {
		addrs, err := r.LookupNetIP(ctx, network, "db.example.")
		if err != nil || len(addrs) != 1 || addrs[0] != want {
			t.Errorf("DNS %s db.example: %v %v, want [%s]", network, addrs, err, want)
		}
	}
}

// TestFaults: each fault breaks the pod's path to the db and its lift opens it at the time asked.
func TestFaults(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := testbed.New(t)
	list := confList(t, b, testbed.K3sConflist("1.0.0"))
	pod := newPod(t, b)
	if _, err := b.Add(ctx, list, pod); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	for _, tc := range []struct {
		name  string
		fault func() (*testbed.Fault, error)
	}{
		{"router nft drop", func() (*testbed.Fault, error) { return b.BlockRouter(ctx) }},
		{"node blackhole", func() (*testbed.Fault, error) { return b.BlackholeNode(ctx) }},
		{"node prohibit", func() (*testbed.Fault, error) { return b.ProhibitNode(ctx) }},
		{"pod route missing", func() (*testbed.Fault, error) { return b.RemovePodRoute(pod) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := tc.fault()
			if err != nil {
				t.Fatal(err)
			}
			err = connect(ctx, pod, testbed.DBTCP, 200*time.Millisecond)
			if err == nil {
				t.Fatalf("connected through %s", f)
			}
			t.Logf("blocked by %s: %v", f, err)
			// Blocking again is harmless; the lift comes at the time asked.
			if err := f.Block(); err != nil {
				t.Fatal(err)
			}
			at := time.Now().Add(100 * time.Millisecond)
			opened := <-f.OpenAt(at)
			if opened.Err != nil {
				t.Fatal(opened.Err)
			}
			// Never early; late only by scheduling (more on a loaded machine) and the lift itself.
			if opened.Requested.Before(at) || opened.At.Before(opened.Requested) || opened.At.Sub(at) > 500*time.Millisecond {
				t.Errorf("asked for %v, lift requested %v later and done %v later", at.Format(time.TimeOnly),
					opened.Requested.Sub(at), opened.At.Sub(at))
			}
			t.Logf("%s lifted %v after the time asked", f, opened.At.Sub(at))
			if err := connect(ctx, pod, testbed.DBTCP, time.Second); err != nil {
				t.Errorf("after lifting %s: %v", f, err)
			}
		})
	}
}

// TestCloseLeavesNothing: Close removes every netns, link and file of the bed, even with a pod
// still attached and a fault and a timer pending.
func TestCloseLeavesNothing(t *testing.T) {
	t.Parallel()
	rootForward := readRootForward(t)
	ctx := testContext(t)
	b := testbed.New(t)
	pod := newPod(t, b)
	if _, err := b.Add(ctx, confList(t, b, testbed.K3sConflist("1.0.0")), pod); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	f, err := b.BlockRouter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pending := f.OpenAfter(time.Hour)

	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, ok := <-pending; ok {
		t.Errorf("a timer pending at Close lifted its fault")
	}
	if names, err := testbed.Leftovers(b.Prefix + "-"); err != nil || len(names) > 0 {
		t.Errorf("netns left after Close: %v %v", names, err)
	}
	assertGone(t, b.Dir)
	if _, err := b.NewPod(ctx); err == nil {
		t.Errorf("NewPod after Close succeeded")
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	assertRootUntouched(t, rootForward)
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func confList(t *testing.T, b *testbed.Bed, raw []byte) *libcni.NetworkConfigList {
	t.Helper()
	list, err := b.ConfList(raw)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func newPod(t *testing.T, b *testbed.Bed) *testbed.Pod {
	t.Helper()
	p, err := b.NewPod(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// podAddr returns the pod's address of one family from the result, checking its gateway is cni0's.
func podAddr(t *testing.T, res *current.Result, v6 bool) netip.Prefix {
	t.Helper()
	gw := testbed.PodGateway
	if v6 {
		gw = testbed.PodGateway6
	}
	for _, ip := range res.IPs {
		a, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok || a.Unmap().Is6() != v6 {
			continue
		}
		ones, _ := ip.Address.Mask.Size()
		if g, _ := netip.AddrFromSlice(ip.Gateway); g.Unmap() != gw {
			t.Errorf("gateway of %s: %s, want %s", a.Unmap(), ip.Gateway, gw)
		}
		return netip.PrefixFrom(a.Unmap(), ones)
	}
	t.Fatalf("no IPv6=%v address in result %v", v6, res)
	return netip.Prefix{}
}

// checkPodNetns: eth0 carries the address with flannel's MTU, and the default route leads to cni0.
func checkPodNetns(t *testing.T, pod *testbed.Pod, addr netip.Addr) {
	t.Helper()
	h, err := pod.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Delete()
	link, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if mtu := link.Attrs().MTU; mtu != testbed.FlannelMTU {
		t.Errorf("eth0 MTU %d, want %d", mtu, testbed.FlannelMTU)
	}
	out, err := pod.IP(t.Context(), "-4", "route", "show", "default")
	if err != nil {
		t.Fatal(err)
	}
	if want := "default via " + testbed.PodGateway.String() + " dev eth0"; !strings.Contains(string(out), want) {
		t.Errorf("pod default route %q, want %q", out, want)
	}
	out, err = pod.IP(t.Context(), "-4", "addr", "show", "dev", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), addr.String()+"/24") {
		t.Errorf("eth0 addresses %q, want %s/24", out, addr)
	}
}

// checkDelegate: the flannel double saved the bridge config K3S.md quotes, plus the bed's
// host-local dataDir.
func checkDelegate(t *testing.T, b *testbed.Bed, pod *testbed.Pod, cniVersion string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(b.FlannelDir, pod.ContainerID))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"cniVersion":"` + cniVersion + `","name":"cbr0","type":"bridge",
	 "hairpinMode":true,"forceAddress":true,"isDefaultGateway":true,"isGateway":true,
	 "ipMasq":false,"mtu":1450,
	 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.42.0.0/24"}]],"routes":[{"dst":"10.42.0.0/16"}],
	  "dataDir":` + strconv.Quote(b.IPAMDir) + `}}`
	var got, wantV any
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(want), &wantV); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, wantV) {
		t.Errorf("saved delegate config\n got %s\nwant %s", raw, want)
	}
}

func connect(ctx context.Context, pod *testbed.Pod, target netip.AddrPort, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := pod.Dial(ctx, "tcp", target.String())
	if err != nil {
		return err
	}
	return c.Close()
}

func hasLink(t *testing.T, pod *testbed.Pod, name string) bool {
	t.Helper()
	h, err := pod.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Delete()
	_, err = h.LinkByName(name)
	return err == nil
}

func assertGone(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still exists (%v)", path, err)
	}
}

func assertExists(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Errorf("%s: %v", path, err)
	}
}

func readRootForward(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// assertRootUntouched: no chain ever ran in the root netns.
func assertRootUntouched(t *testing.T, forwardBefore string) {
	t.Helper()
	if now := readRootForward(t); now != forwardBefore {
		t.Errorf("root netns ip_forward changed: %q -> %q", forwardBefore, now)
	}
	if _, err := net.InterfaceByName("cni0"); err == nil {
		t.Errorf("cni0 exists in the root netns")
	}
}
