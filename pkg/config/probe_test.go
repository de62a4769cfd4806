package config

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestParseProbe(t *testing.T) {
	v4 := netip.MustParseAddr("10.0.0.5")
	v6 := netip.MustParseAddr("fd00::5")
	tests := []struct {
		name, in string
		want     Probe
	}{
		{"icmp", "icmp://10.0.0.5", Probe{Scheme: ICMP, Addr: v4, URL: "icmp://10.0.0.5"}},
		{"icmp trailing slash", "icmp://10.0.0.5/", Probe{Scheme: ICMP, Addr: v4, URL: "icmp://10.0.0.5"}},
		{"icmp v6", "icmp://[FD00:0::5]", Probe{Scheme: ICMP, Addr: v6, URL: "icmp://[fd00::5]"}},
		{"upper-case scheme", "ICMP://10.0.0.5", Probe{Scheme: ICMP, Addr: v4, URL: "icmp://10.0.0.5"}},
		{"spaces trimmed", "  icmp://10.0.0.5\n", Probe{Scheme: ICMP, Addr: v4, URL: "icmp://10.0.0.5"}},
		{"tcp", "tcp://10.0.0.5:5432", Probe{Scheme: TCP, Addr: v4, Port: 5432, URL: "tcp://10.0.0.5:5432"}},
		{"tcp leading zero port", "tcp://10.0.0.5:05432", Probe{Scheme: TCP, Addr: v4, Port: 5432, URL: "tcp://10.0.0.5:5432"}},
		{"tcp v6", "tcp://[fd00::5]:443", Probe{Scheme: TCP, Addr: v6, Port: 443, URL: "tcp://[fd00::5]:443"}},
		{"tcp refused ok", "tcp://10.0.0.5:9000/?refused=ok", Probe{Scheme: TCP, Addr: v4, Port: 9000, RefusedOK: true, URL: "tcp://10.0.0.5:9000?refused=ok"}},
		{"tcp port 65535", "tcp://10.0.0.5:65535", Probe{Scheme: TCP, Addr: v4, Port: 65535, URL: "tcp://10.0.0.5:65535"}},
		{"loopback", "tcp://127.0.0.1:80", Probe{Scheme: TCP, Addr: netip.MustParseAddr("127.0.0.1"), Port: 80, URL: "tcp://127.0.0.1:80"}},
		{"ipv4 link-local is fine", "dns://169.254.20.10/cluster.local", Probe{Scheme: DNS, Addr: netip.MustParseAddr("169.254.20.10"), Port: 53, Name: "cluster.local.", QType: "A", URL: "dns://169.254.20.10/cluster.local"}},
		{"dns", "dns://10.0.0.5/kubernetes.default.svc.cluster.local",
			Probe{Scheme: DNS, Addr: v4, Port: 53, Name: "kubernetes.default.svc.cluster.local.", QType: "A", URL: "dns://10.0.0.5/kubernetes.default.svc.cluster.local"}},
		{"dns default port written", "dns://10.0.0.5:53/example.com.", Probe{Scheme: DNS, Addr: v4, Port: 53, Name: "example.com.", QType: "A", URL: "dns://10.0.0.5/example.com"}},
		{"dns port aaaa", "dns://[fd00::5]:5353/Example.COM?type=aaaa",
			Probe{Scheme: DNS, Addr: v6, Port: 5353, Name: "example.com.", QType: "AAAA", URL: "dns://[fd00::5]:5353/example.com?type=AAAA"}},
		{"dns type A explicit", "dns://10.0.0.5/a.b?type=A", Probe{Scheme: DNS, Addr: v4, Port: 53, Name: "a.b.", QType: "A", URL: "dns://10.0.0.5/a.b"}},
		{"dns underscore", "dns://10.0.0.5/_dns.resolver.arpa", Probe{Scheme: DNS, Addr: v4, Port: 53, Name: "_dns.resolver.arpa.", QType: "A", URL: "dns://10.0.0.5/_dns.resolver.arpa"}},
		{"dns 63-char label", "dns://10.0.0.5/" + strings.Repeat("a", 63), Probe{Scheme: DNS, Addr: v4, Port: 53, Name: strings.Repeat("a", 63) + ".", QType: "A", URL: "dns://10.0.0.5/" + strings.Repeat("a", 63)}},
		{"http", "http://10.0.0.5", Probe{Scheme: HTTP, Addr: v4, Port: 80, Host: "10.0.0.5", Path: "/", StatusMin: 200, StatusMax: 399, URL: "http://10.0.0.5/"}},
		{"http path port", "http://10.0.0.5:8080/healthz", Probe{Scheme: HTTP, Addr: v4, Port: 8080, Host: "10.0.0.5:8080", Path: "/healthz", StatusMin: 200, StatusMax: 399, URL: "http://10.0.0.5:8080/healthz"}},
		{"http default port written", "http://10.0.0.5:80/", Probe{Scheme: HTTP, Addr: v4, Port: 80, Host: "10.0.0.5", Path: "/", StatusMin: 200, StatusMax: 399, URL: "http://10.0.0.5/"}},
		{"http status range", "http://10.0.0.5/ready?status=200-204", Probe{Scheme: HTTP, Addr: v4, Port: 80, Host: "10.0.0.5", Path: "/ready", StatusMin: 200, StatusMax: 204, URL: "http://10.0.0.5/ready?status=200-204"}},
		{"http single status", "http://10.0.0.5/?status=204", Probe{Scheme: HTTP, Addr: v4, Port: 80, Host: "10.0.0.5", Path: "/", StatusMin: 204, StatusMax: 204, URL: "http://10.0.0.5/?status=204"}},
		{"http default status written", "http://10.0.0.5/?status=200-399", Probe{Scheme: HTTP, Addr: v4, Port: 80, Host: "10.0.0.5", Path: "/", StatusMin: 200, StatusMax: 399, URL: "http://10.0.0.5/"}},
		{"http target params kept", "http://10.0.0.5/health?x=1&status=204&&y=a%20b",
			Probe{Scheme: HTTP, Addr: v4, Port: 80, Host: "10.0.0.5", Path: "/health?x=1&y=a%20b", StatusMin: 204, StatusMax: 204, URL: "http://10.0.0.5/health?x=1&y=a%20b&status=204"}},
		{"http escaped path", "http://10.0.0.5/a%2Fb", Probe{Scheme: HTTP, Addr: v4, Port: 80, Host: "10.0.0.5", Path: "/a%2Fb", StatusMin: 200, StatusMax: 399, URL: "http://10.0.0.5/a%2Fb"}},
		{"http query without path", "http://10.0.0.5?x", Probe{Scheme: HTTP, Addr: v4, Port: 80, Host: "10.0.0.5", Path: "/?x", StatusMin: 200, StatusMax: 399, URL: "http://10.0.0.5/?x"}},
		{"https", "https://[fd00::5]/", Probe{Scheme: HTTPS, Addr: v6, Port: 443, Host: "[fd00::5]", Path: "/", StatusMin: 200, StatusMax: 399, URL: "https://[fd00::5]/"}},
		{"https port", "https://[fd00::5]:8443/x?status=100-599", Probe{Scheme: HTTPS, Addr: v6, Port: 8443, Host: "[fd00::5]:8443", Path: "/x", StatusMin: 100, StatusMax: 599, URL: "https://[fd00::5]:8443/x?status=100-599"}},
		{"userinfo dropped", "https://alice:s3cret@10.0.0.5/x?status=200-401", Probe{Scheme: HTTPS, Addr: v4, Port: 443, Host: "10.0.0.5", Path: "/x", StatusMin: 200, StatusMax: 401, URL: "https://10.0.0.5/x?status=200-401"}},
		{"userinfo dropped tcp", "tcp://alice@10.0.0.5:22", Probe{Scheme: TCP, Addr: v4, Port: 22, URL: "tcp://10.0.0.5:22"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseProbe(tt.in)
			if err != nil {
				t.Fatalf("ParseProbe(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseProbe(%q)\n got %+v\nwant %+v", tt.in, got, tt.want)
			}
			again, err := ParseProbe(got.URL)
			if err != nil || again != got {
				t.Fatalf("ParseProbe(%q) (its own URL) = %+v, %v; want %+v", got.URL, again, err, got)
			}
		})
	}
}

func TestParseProbeErrors(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string // substrings of the error
	}{
		{"empty", "", []string{"not a probe URL"}},
		{"no scheme", "10.0.0.5:80", []string{"not a probe URL", "tcp://10.0.0.5:5432"}},
		{"opaque", "tcp:10.0.0.5:80", []string{"not a probe URL"}},
		{"unknown scheme", "udp://10.0.0.5:53", []string{`unknown scheme "udp"`, "icmp, tcp, dns, http or https"}},
		{"no host", "tcp://:80", []string{"no host"}},
		{"empty host", "icmp://", []string{"no host"}},
		{"hostname", "tcp://db.local:5432", []string{`probe "tcp://db.local:5432": host "db.local" is not an IP address; probes need an IP literal such as tcp://10.0.0.5:5432 (netready runs before DNS works)`}},
		{"hostname http keeps path in example", "http://api.local/health", []string{`host "api.local"`, "such as http://10.0.0.5/health"}},
		{"bad ipv4", "icmp://10.0.0.256", []string{`host "10.0.0.256" is not an IP address`}},
		{"leading zero ipv4", "icmp://010.0.0.1", []string{"is not an IP address"}},
		{"ipv6 without brackets", "tcp://fd00::5:80", []string{"needs brackets"}},
		{"ipv4 in brackets", "tcp://[10.0.0.5]:80", []string{"not a valid URL"}},
		{"zone", "icmp://[fd00::5%25eth0]", []string{`zone "eth0" not allowed`}},
		{"v4-mapped", "tcp://[::ffff:10.0.0.5]:80", []string{"IPv4-mapped", "write 10.0.0.5"}},
		{"unspecified v4", "icmp://0.0.0.0", []string{"unspecified address 0.0.0.0"}},
		{"unspecified v6", "tcp://[::]:80", []string{"unspecified address ::"}},
		{"multicast v4", "icmp://224.0.0.1", []string{"multicast address 224.0.0.1"}},
		{"multicast v6", "icmp://[ff02::1]", []string{"multicast address ff02::1"}},
		{"broadcast", "icmp://255.255.255.255", []string{"broadcast"}},
		{"link-local v6", "icmp://[fe80::1]", []string{"link-local address fe80::1"}},
		{"fragment", "http://10.0.0.5/#x", []string{"fragment"}},
		{"empty port", "http://10.0.0.5:/", []string{"empty port"}},
		{"tcp without port", "tcp://10.0.0.5", []string{"tcp needs a port", "tcp://10.0.0.5:5432"}},
		{"tcp port 0", "tcp://10.0.0.5:0", []string{"port 0 out of range 1-65535"}},
		{"tcp port too big", "tcp://10.0.0.5:65536", []string{"port 65536 out of range 1-65535"}},
		{"port huge", "http://10.0.0.5:99999999999999999999999/", []string{"out of range 1-65535"}},
		{"port not a number", "tcp://10.0.0.5:http", []string{"not a valid URL", "invalid port"}},
		{"tcp path", "tcp://10.0.0.5:80/x", []string{"tcp takes no path"}},
		{"tcp refused other", "tcp://10.0.0.5:80?refused=yes", []string{"refused=yes", "refused=ok"}},
		{"tcp refused twice", "tcp://10.0.0.5:80?refused=ok&refused=ok", []string{`"refused" given twice`}},
		{"tcp unknown param", "tcp://10.0.0.5:80?type=A", []string{`unknown parameter "type"`, "tcp accepts refused=ok"}},
		{"tcp empty key", "tcp://10.0.0.5:80?=ok", []string{`unknown parameter ""`}},
		{"icmp port", "icmp://10.0.0.5:7", []string{"icmp has no port"}},
		{"icmp path", "icmp://10.0.0.5/x", []string{"icmp takes no path"}},
		{"icmp param", "icmp://10.0.0.5?refused=ok", []string{`unknown parameter "refused"`, "icmp takes no parameters"}},
		{"icmp empty key", "icmp://10.0.0.5?=x", []string{`unknown parameter ""`}},
		{"dns without name", "dns://10.0.0.5", []string{"dns needs a name"}},
		{"dns slash only", "dns://10.0.0.5/", []string{"dns needs a name"}},
		{"dns root", "dns://10.0.0.5/.", []string{"dns needs a name"}},
		{"dns empty label", "dns://10.0.0.5/a..b", []string{"1 to 63 characters"}},
		{"dns long label", "dns://10.0.0.5/" + strings.Repeat("a", 64) + ".com", []string{"1 to 63 characters"}},
		{"dns long name", "dns://10.0.0.5/" + strings.Repeat(strings.Repeat("a", 60)+".", 5), []string{"DNS allows 253"}},
		{"dns bad char", "dns://10.0.0.5/ex%20ample.com", []string{"holds ' '"}},
		{"space", "http://10.0.0.5/a b", []string{"%20"}},
		{"dns slash in name", "dns://10.0.0.5/a/b", []string{"holds '/'"}},
		{"dns bad type", "dns://10.0.0.5/a.b?type=MX", []string{"type=MX", "type=A or type=AAAA"}},
		{"dns refused", "dns://10.0.0.5/a.b?refused=ok", []string{`unknown parameter "refused"`, "dns accepts type"}},
		{"http status too low", "http://10.0.0.5/?status=99", []string{"status=99", "100-599"}},
		{"http status too high", "http://10.0.0.5/?status=200-600", []string{"status=200-600"}},
		{"http status reversed", "http://10.0.0.5/?status=300-200", []string{"MIN <= MAX"}},
		{"http status junk", "http://10.0.0.5/?status=ok", []string{"status=ok"}},
		{"http status open range", "http://10.0.0.5/?status=200-", []string{"status=200-"}},
		{"http status twice", "http://10.0.0.5/?status=200&status=204", []string{`"status" given twice`}},
		{"http escaped status key", "http://10.0.0.5/?st%61tus=1", []string{"status=1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParseProbe(tt.in)
			if err == nil {
				t.Fatalf("ParseProbe(%q) = %+v, want an error", tt.in, p)
			}
			if !strings.HasPrefix(err.Error(), "probe ") {
				t.Errorf("error %q does not start by naming the probe", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("ParseProbe(%q) error\n %q\nwant it to contain %q", tt.in, err, w)
				}
			}
		})
	}
}

// TestParseProbeUserinfoNeverShown covers the places userinfo could leak: the
// canonical URL, the parsed fields and every kind of error.
func TestParseProbeUserinfoNeverShown(t *testing.T) {
	inputs := []string{
		"http://alice:s3cret@10.0.0.5/",
		"https://alice:s3cret@[fd00::5]:8443/x",
		"tcp://alice:s3cret@10.0.0.5:80",
		"dns://alice:s3cret@10.0.0.5/x.y",
		"http://alice:s3cret@api.local/health",
		"http://alice:s3cret@10.0.0.5:99999/",
		"http://alice:s3cret@10.0.0.5/?status=9",
		"tcp://alice:s3cret@10.0.0.5",
		"udp://alice:s3cret@10.0.0.5:53",
		"tcp:alice:s3cret@10.0.0.5:80",
		"alice:s3cret@10.0.0.5",
		"http://alice:s3/cret@10.0.0.5/",
		"http://alice:1234/s3cret@10.0.0.5/",
		"http://alice:s3?cret@10.0.0.5/",
		"http://alice:s3#cret@10.0.0.5/",
		"http://alice:s3%zzcret@10.0.0.5/",
		"http://alice:s3cret@[fd00::5%25eth0]/",
		"http://alice:s3cret@[::ffff:10.0.0.5]/",
	}
	for _, in := range inputs {
		t.Run(in, func(t *testing.T) {
			p, err := ParseProbe(in)
			shown := fmt.Sprintf("%+v %v", p, err)
			for _, secret := range []string{"alice", "s3", "cret"} {
				if strings.Contains(shown, secret) {
					t.Errorf("ParseProbe(%q) shows %q: %s", in, secret, shown)
				}
			}
		})
	}
}
