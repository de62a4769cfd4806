package config

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// The seed corpus is in testdata/fuzz; go test runs it, go test -fuzz grows it.

func FuzzParseProbe(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseProbe(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "probe ") {
				t.Fatalf("error %q does not name the probe", err)
			}
			if pw := password(s); pw != "" && strings.Contains(err.Error(), pw) {
				t.Fatalf("error %q shows the password %q", err, pw)
			}
			return
		}
		if p.String() != p.URL || !p.Addr.IsValid() || p.Addr.Zone() != "" || p.Addr.Is4In6() {
			t.Fatalf("ParseProbe(%q) = %+v", s, p)
		}
		if (p.Scheme == ICMP) != (p.Port == 0) {
			t.Fatalf("ParseProbe(%q): %s with port %d", s, p.Scheme, p.Port)
		}
		if u, err := url.Parse(p.URL); err != nil || u.User != nil {
			t.Fatalf("canonical URL %q does not parse without userinfo: %v", p.URL, err)
		}
		again, err := ParseProbe(p.URL)
		if err != nil || again != p {
			t.Fatalf("ParseProbe(%q) = %+v\nParseProbe(its URL %q) = %+v, %v", s, p, p.URL, again, err)
		}
	})
}

// password returns the password of s when it is a clear case: long enough
// and written nowhere else in s, so that finding it in an error is a leak.
func password(s string) string {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil || u.User == nil {
		return ""
	}
	pw, _ := u.User.Password()
	if len(pw) < 4 || strings.Count(s, pw) != 1 || strings.ContainsAny(pw, "%") {
		return ""
	}
	return pw
}

func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || (te.Code != types.ErrDecodingFailure && te.Code != types.ErrInvalidNetworkConfig) ||
				!strings.HasPrefix(te.Msg, "netready config: ") {
				t.Fatalf("Parse error %v (%T), want a *types.Error, code 6 or 7", err, err)
			}
			return
		}
		b := c.Base
		if b.Timeout <= 0 || b.Timeout > MaxTimeout || b.AttemptTimeout <= 0 ||
			b.Interval < minInterval || b.Interval > b.MaxInterval || (b.OnTimeout != Fail && b.OnTimeout != Allow) || b.Skipped {
			t.Fatalf("Parse accepted a base spec out of bounds: %+v", b)
		}
		seen := map[string]bool{}
		for _, p := range b.Probes {
			if again, err := ParseProbe(p.URL); err != nil || from(again, "config") != p || seen[p.URL] {
				t.Fatalf("probe %+v does not re-parse to itself or is a duplicate", p)
			}
			seen[p.URL] = true
		}
		for _, pod := range []Pod{
			{Annotations: c.RuntimeConfig.PodAnnotations},
			{Namespace: "kube-system", Name: "coredns-7c6b", Annotations: c.RuntimeConfig.PodAnnotations},
			{Namespace: "default", Name: "web", Annotations: c.RuntimeConfig.PodAnnotations},
		} {
			s, err := c.Resolve(pod)
			if err != nil {
				var te *types.Error
				if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
					t.Fatalf("Resolve error %v (%T), want a *types.Error, code 7", err, err)
				}
				continue
			}
			if s.Timeout <= 0 || s.Timeout > MaxTimeout || s.AttemptTimeout <= 0 || s.AttemptTimeout > s.Timeout {
				t.Fatalf("Resolve(%+v) = %+v: timeout out of bounds", pod, s)
			}
			if s.Skipped != (s.SkipReason != "") {
				t.Fatalf("Resolve(%+v) = %+v: Skipped and SkipReason disagree", pod, s)
			}
		}
	})
}
