// Package config turns a netready plugin object, CNI_ARGS and pod annotations
// into one resolved Spec. It is pure: no I/O, no clock, no netns.
package config

import (
	"net/netip"
	"time"
)

// Scheme names a probe kind.
type Scheme string

const (
	ICMP  Scheme = "icmp"
	TCP   Scheme = "tcp"
	DNS   Scheme = "dns"
	HTTP  Scheme = "http"
	HTTPS Scheme = "https"
)

// Probe is one parsed probe URL. Hosts are always IP literals.
type Probe struct {
	Scheme Scheme
	Addr   netip.Addr // target address, unmapped (a v4-mapped v6 literal is rejected)
	Port   uint16     // tcp/dns/http/https; 0 for icmp. Defaults: dns 53, http 80, https 443.

	RefusedOK bool // tcp: ?refused=ok, a RST also counts as an answer

	Name  string // dns: the name queried (from the path, without leading '/'), fully qualified with a trailing '.'
	QType string // dns: "A" (default) or "AAAA" (?type=AAAA)

	Host      string // http(s): the Host header value: the canonical IP, and the port unless it is the default
	Path      string // http(s): path plus query, without netready's own parameters; "/" when empty
	StatusMin int    // http(s): lowest accepted status, default 200 (?status=200-204 or ?status=204)
	StatusMax int    // http(s): highest accepted status, default 399

	// URL is the canonical form, without userinfo, safe to log and to show in errors.
	URL string

	// Origin says where the probe came from, for the log and explain:
	// "config", "rules[N]" or "annotation". ParseProbe leaves it empty.
	Origin string
}

// String returns the canonical, log-safe URL.
func (p Probe) String() string { return p.URL }

// AddrPort is the target's address and port (port 0 for icmp).
func (p Probe) AddrPort() netip.AddrPort { return netip.AddrPortFrom(p.Addr, p.Port) }

// OnTimeout says what ADD does when the deadline passes with conditions unmet.
type OnTimeout string

const (
	Fail  OnTimeout = "fail"  // CNI error 11 (try again later)
	Allow OnTimeout = "allow" // pass prevResult through, log a warning
)

// The whole ADD's budget, as measured on a real K3s v1.35 node (e2e/k3s,
// TestSandboxBudget and TestBlocked):
//   - containerd kills a CNI ADD 239.4 s after it started (the kubelet's
//     RunPodSandbox deadline, twice --runtime-request-timeout), and the pod's
//     event then says only "context deadline exceeded": MaxTimeout leaves
//     40 s of that to the plugins before netready and to sandbox creation;
//   - after a failed ADD the kubelet retries the sandbox 11.9-18.8 s later
//     (more after repeated failures), so an outage that outlasts the timeout
//     costs the pod that gap: DefaultTimeout outlasts outages of up to a
//     minute. A pod deleted during its ADD (which neither the kubelet nor
//     containerd stops) would linger that long; podWatch ends such an ADD
//     once the API server marks the pod deleted.
//
// CRI-O bounds a CNI call at 60 s: there, keep timeout at 50 s or less.
const (
	DefaultTimeout = 60 * time.Second
	MaxTimeout     = 200 * time.Second
)

// The attempt schedule's defaults, for the conflist and for a gate.Options
// left zero. An attempt every 10 ms backing off to 40 ms finds a path within
// 40 ms of its opening; an attempt's 1 s covers any target within a few
// hundred milliseconds' round trip (see gate.Options.MaxInFlight).
const (
	DefaultInterval       = 10 * time.Millisecond
	DefaultMaxInterval    = 40 * time.Millisecond
	DefaultAttemptTimeout = time.Second
)

// Spec is what the gate enforces for one pod: the configuration after
// resolution (config -> first matching rule -> annotations).
type Spec struct {
	Timeout        time.Duration
	OnTimeout      OnTimeout
	Gateway        bool
	DefaultRoute   bool
	Probes         []Probe
	Interval       time.Duration
	MaxInterval    time.Duration
	AttemptTimeout time.Duration

	// Skipped pods are passed through ungated; SkipReason says why.
	Skipped    bool
	SkipReason string

	// Rule names the rule that applied ("rules[N]"), "" when none did.
	Rule string
	// AnnotationsIgnored is set when the pod has netready.dev/ annotations
	// but the config's annotations.allow is false.
	AnnotationsIgnored bool
}
