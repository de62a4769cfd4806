package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"maps"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// Conf is netready's object in the conflist, validated, with defaults filled
// in. Parse is the only way to build one. It does not marshal back to JSON:
// NetConf's MarshalJSON is promoted and writes NetConf's fields only.
type Conf struct {
	types.NetConf // name, cniVersion, type, capabilities, ipam, dns, raw prevResult

	// RuntimeConfig is what the runtime adds for the capabilities the conflist declares.
	RuntimeConfig RuntimeConfig
	// Args is the conflist's "args" object, kept raw: netready reads none of it.
	Args json.RawMessage

	// Base is what every pod gets before rules and annotations: the top-level
	// fields timeout to attemptTimeout, defaults filled in. Skipped is false.
	Base Spec
	// Skip selects the pods that are passed through ungated.
	Skip Match
	// Rules are tried in order; the first that matches a pod adjusts its spec.
	Rules []Rule
	// Annotations bounds what a pod may ask for through its annotations.
	Annotations AnnotationPolicy
	// LogFile is the absolute path of the JSON-lines log; "" logs to stderr.
	LogFile string
	// PodWatch, when set, lets a waiting ADD ask the API server whether its
	// pod was deleted meanwhile; nil (the default) never contacts it.
	PodWatch *PodWatch
}

// PodWatch is the "podWatch" object: how to reach the Kubernetes API server
// with credentials that may read the pod (on K3s, the kubelet's own).
type PodWatch struct {
	Server   string        // https URL of the API server, as the node reaches it
	CAFile   string        // PEM bundle the server's certificate must chain to
	CertFile string        // PEM client certificate
	KeyFile  string        // its PEM key
	After    time.Duration // how long the ADD must have waited before the first request
}

// RuntimeConfig holds the runtime-injected values netready uses.
type RuntimeConfig struct {
	// PodAnnotations arrive through the io.kubernetes.cri.pod-annotations
	// capability, which containerd and CRI-O honour.
	PodAnnotations map[string]string `json:"io.kubernetes.cri.pod-annotations,omitempty"`
}

// Match selects pods by namespace, or by "namespace/name" where a '*' in the
// name stands for any run of characters ("kube-system/coredns-*").
type Match struct {
	Namespaces []string
	Pods       []string
}

// Rule adjusts the spec of the pods it matches. Zero values keep the base.
type Rule struct {
	Match
	// Probes replace the base probes when non-nil; a rule that says
	// "probes": [] leaves its pods with no probes, on purpose.
	Probes       []Probe
	Timeout      time.Duration
	OnTimeout    OnTimeout
	Gateway      *bool
	DefaultRoute *bool
}

// AnnotationPolicy is the "annotations" object: the caps on what a pod may ask for.
type AnnotationPolicy struct {
	Allow      bool          // default true; false ignores every netready.dev/ annotation
	MaxTimeout time.Duration // default 60s
	MaxProbes  int           // default 8: the most probes a pod may end up with once it adds some
	AllowSkip  bool          // default false
}

var (
	defaultSpec = Spec{
		Timeout:        DefaultTimeout,
		OnTimeout:      Fail,
		Gateway:        true,
		DefaultRoute:   true,
		Interval:       DefaultInterval,
		MaxInterval:    DefaultMaxInterval,
		AttemptTimeout: DefaultAttemptTimeout,
	}
	defaultAnnotations = AnnotationPolicy{Allow: true, MaxTimeout: 2 * DefaultTimeout, MaxProbes: 8}
	// A ready pod is gated within milliseconds, and a short wait (a route
	// programmed late) within tens of them: neither should pay for a TLS
	// connection to the API server, nor load it, so the watch starts only
	// once a wait has lasted a second.
	defaultPodWatchAfter = time.Second
)

// minInterval keeps a typo such as "10us" from flooding a target that is down.
const minInterval = time.Millisecond

// Field names, per object, in the order error messages list them.
var (
	cniFields        = []string{"name", "cniVersion", "type", "prevResult", "runtimeConfig", "capabilities", "args", "dns", "ipam"}
	ownFields        = []string{"timeout", "onTimeout", "gateway", "defaultRoute", "probes", "interval", "maxInterval", "attemptTimeout", "skip", "rules", "annotations", "logFile", "podWatch"}
	skipFields       = []string{"namespaces", "pods"}
	ruleFields       = []string{"namespaces", "pods", "probes", "timeout", "onTimeout", "gateway", "defaultRoute"}
	annotationFields = []string{"allow", "maxTimeout", "maxProbes", "allowSkip"}
	podWatchFields   = []string{"server", "caFile", "certFile", "keyFile", "after"}
)

// Parse reads netready's plugin object from the runtime's stdin. Every
// problem is reported at once, each led by the field's path; the error is a
// *types.Error with code 6 (not a JSON object) or 7 (invalid field).
//
// prevResult is kept raw (NetConf.RawPrevResult): whether it must be there,
// and in which version, is the verb's business.
func Parse(stdin []byte) (*Conf, error) {
	top, err := decodeObject(stdin)
	if err != nil {
		return nil, err
	}
	var d decoder
	d.unknownFields("", top, ownFields, true)

	c := &Conf{Base: defaultSpec, Annotations: defaultAnnotations}
	d.decode("name", top["name"], &c.Name, "a string")
	d.decode("cniVersion", top["cniVersion"], &c.CNIVersion, "a string")
	d.decode("type", top["type"], &c.Type, "a string")
	d.decode("capabilities", top["capabilities"], &c.Capabilities, "an object of booleans")
	d.decode("ipam", top["ipam"], &c.IPAM, "an object")
	d.decode("dns", top["dns"], &c.DNS, "an object (nameservers, domain, search, options)")
	d.decode("prevResult", top["prevResult"], &c.RawPrevResult, "an object")
	d.decode("runtimeConfig", top["runtimeConfig"], &c.RuntimeConfig, "an object")
	d.decode("cni.dev/valid-attachments", top["cni.dev/valid-attachments"], &c.ValidAttachments, "a list of {containerID, ifname}")
	if raw := top["args"]; present(raw) {
		if kind(raw) != '{' {
			d.errorf("args", "want an object, got %s", describe(raw))
		} else {
			c.Args = raw
		}
	}

	b := &c.Base
	d.timeout("timeout", top["timeout"], &b.Timeout)
	d.onTimeout("onTimeout", top["onTimeout"], &b.OnTimeout)
	d.boolean("gateway", top["gateway"], &b.Gateway)
	d.boolean("defaultRoute", top["defaultRoute"], &b.DefaultRoute)
	b.Probes = d.probes("probes", top["probes"])
	if d.duration("interval", top["interval"], &b.Interval) && b.Interval < minInterval {
		d.errorf("interval", "%s is less than %s, which would flood a target that is down", b.Interval, minInterval)
	}
	d.duration("maxInterval", top["maxInterval"], &b.MaxInterval)
	d.duration("attemptTimeout", top["attemptTimeout"], &b.AttemptTimeout)
	if d.decode("logFile", top["logFile"], &c.LogFile, "a string") && c.LogFile != "" && !filepath.IsAbs(c.LogFile) {
		d.errorf("logFile", "want an absolute path, got %q: the runtime chooses netready's working directory", clip(c.LogFile))
	}

	if raw := top["skip"]; present(raw) {
		if m := d.object("skip", raw, skipFields); m != nil {
			c.Skip = d.match("skip", m)
		}
	}
	if raw := top["rules"]; present(raw) {
		var rules []json.RawMessage
		if d.decode("rules", raw, &rules, "a list of objects") {
			for i, r := range rules {
				c.Rules = append(c.Rules, d.rule(fmt.Sprintf("rules[%d]", i), r))
			}
		}
	}
	if raw := top["annotations"]; present(raw) {
		if m := d.object("annotations", raw, annotationFields); m != nil {
			d.annotationPolicy(m, &c.Annotations)
		}
	}
	if raw := top["podWatch"]; present(raw) {
		if m := d.object("podWatch", raw, podWatchFields); m != nil {
			c.PodWatch = d.podWatch(m)
		}
	}

	// Relations between fields, checked once every field holds what it says.
	if d.count() == 0 {
		if b.Interval > b.MaxInterval {
			d.errorf("interval", `%s is more than "maxInterval" %s: attempts start at interval and back off to maxInterval`, b.Interval, b.MaxInterval)
		}
	}
	if err := d.err("netready config: "); err != nil {
		return nil, err
	}
	return c, nil
}

func (d *decoder) rule(path string, raw json.RawMessage) Rule {
	n := d.count() // a misspelt or malformed selector already has its error
	m := d.object(path, raw, ruleFields)
	if m == nil {
		return Rule{}
	}
	r := Rule{Match: d.match(path, m)}
	if len(r.Namespaces) == 0 && len(r.Pods) == 0 && d.count() == n {
		d.errorf(path, `a rule needs "namespaces" or "pods"; without them it matches no pod`)
	}
	if raw := m["probes"]; present(raw) {
		r.Probes = d.probes(path+".probes", raw)
		if r.Probes == nil {
			r.Probes = []Probe{}
		}
	}
	d.timeout(path+".timeout", m["timeout"], &r.Timeout)
	d.onTimeout(path+".onTimeout", m["onTimeout"], &r.OnTimeout)
	var b bool
	if d.boolean(path+".gateway", m["gateway"], &b) {
		r.Gateway = &b
	}
	var dr bool
	if d.boolean(path+".defaultRoute", m["defaultRoute"], &dr) {
		r.DefaultRoute = &dr
	}
	return r
}

func (d *decoder) match(path string, obj map[string]json.RawMessage) Match {
	var m Match
	if nss, ok := d.stringList(path+".namespaces", obj["namespaces"], "namespace names"); ok {
		for i, ns := range nss {
			if !isLabel(ns) {
				d.errorf(fmt.Sprintf("%s.namespaces[%d]", path, i), "want a namespace name (lower-case letters, digits and '-', at most 63), got %q", clip(ns))
				continue
			}
			m.Namespaces = append(m.Namespaces, ns)
		}
	}
	if pods, ok := d.stringList(path+".pods", obj["pods"], `"namespace/name" strings`); ok {
		for i, p := range pods {
			ns, name, ok := strings.Cut(p, "/")
			if !ok || !isLabel(ns) || !isPodPattern(name) {
				d.errorf(fmt.Sprintf("%s.pods[%d]", path, i), `want "namespace/name", the name lower-case and '*' standing for any characters (such as "kube-system/coredns-*"), got %q`, clip(p))
				continue
			}
			m.Pods = append(m.Pods, p)
		}
	}
	return m
}

func (d *decoder) annotationPolicy(m map[string]json.RawMessage, a *AnnotationPolicy) {
	d.boolean("annotations.allow", m["allow"], &a.Allow)
	d.timeout("annotations.maxTimeout", m["maxTimeout"], &a.MaxTimeout)
	if d.decode("annotations.maxProbes", m["maxProbes"], &a.MaxProbes, "a whole number") && a.MaxProbes < 0 {
		d.errorf("annotations.maxProbes", "want 0 or more, got %d", a.MaxProbes)
	}
	d.boolean("annotations.allowSkip", m["allowSkip"], &a.AllowSkip)
}

// podWatch decodes the "podWatch" object; every field but after is
// required, since a half-configured watch would only fail at each ADD.
func (d *decoder) podWatch(m map[string]json.RawMessage) *PodWatch {
	w := &PodWatch{After: defaultPodWatchAfter}
	n := d.count()
	if !present(m["server"]) {
		d.errorf("podWatch.server", `missing: want the API server's https URL, such as "https://127.0.0.1:6443" (on K3s: the server: line of <data-dir>/agent/kubelet.kubeconfig)`)
	} else if d.decode("podWatch.server", m["server"], &w.Server, "a string") {
		if err := checkServerURL(w.Server); err != "" {
			d.errorf("podWatch.server", "%s", err)
		}
	}
	for _, f := range []struct {
		name, example string
		dst           *string
	}{
		{"caFile", "server-ca.crt", &w.CAFile},
		{"certFile", "client-kubelet.crt", &w.CertFile},
		{"keyFile", "client-kubelet.key", &w.KeyFile},
	} {
		path := "podWatch." + f.name
		switch {
		case !present(m[f.name]):
			d.errorf(path, "missing: want the absolute path of a PEM file (on K3s: <data-dir>/agent/%s)", f.example)
		case d.decode(path, m[f.name], f.dst, "a string") && !filepath.IsAbs(*f.dst):
			d.errorf(path, "want an absolute path, got %q: the runtime chooses netready's working directory", clip(*f.dst))
		}
	}
	d.duration("podWatch.after", m["after"], &w.After)
	if d.count() > n {
		return nil
	}
	return w
}

// checkServerURL says what is wrong with an API server URL, or "".
func checkServerURL(s string) string {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Sprintf("want an https URL such as \"https://127.0.0.1:6443\", got %q", clip(s))
	case u.Scheme != "https":
		return fmt.Sprintf("want an https URL (netready sends the node's client certificate, never in clear), got %q", clip(s))
	case u.Host == "" || u.Hostname() == "":
		return fmt.Sprintf("want a host in the URL, such as \"https://127.0.0.1:6443\", got %q", clip(s))
	case u.User != nil:
		return "want no userinfo in the URL: the client certificate authenticates"
	case u.RawQuery != "" || u.Fragment != "":
		return fmt.Sprintf("want no query or fragment in the URL, got %q", clip(s))
	}
	return ""
}

// decoder decodes fields one by one so that each error names its field,
// and collects every error so that an operator fixes them in one round.
type decoder struct{ errorList }

func (d *decoder) errorf(path, format string, args ...any) {
	d.addf("%q: "+format, append([]any{clip(path)}, args...)...)
}

// errorList collects the problems of one input, at most maxErrors of them
// spelt out: a config or a pod with thousands of mistakes must not turn into
// megabytes of error (and log) text.
type errorList struct {
	errs []string
	more int // errors past maxErrors, counted but not spelt out
}

const maxErrors = 20

func (l *errorList) full() bool { return len(l.errs) >= maxErrors }

// count is how many errors were reported, spelt out or not.
func (l *errorList) count() int { return len(l.errs) + l.more }

func (l *errorList) addf(format string, args ...any) {
	if l.full() { // past the cap only the count matters: no formatting
		l.more++
		return
	}
	l.errs = append(l.errs, fmt.Sprintf(format, args...))
}

// skip counts n errors that were found but not worth spelling out.
func (l *errorList) skip(n int) { l.more += n }

// unknown calls report for each of keys that accepted refuses, in sorted
// order, with the one of candidates it is an obvious misspelling of (or "").
// Past the cap it only counts them: no need to look for their spelling.
func (l *errorList) unknown(keys iter.Seq[string], accepted func(string) bool, candidates []string, report func(key, hint string)) {
	var bad []string
	for k := range keys {
		if !accepted(k) {
			bad = append(bad, k)
		}
	}
	slices.Sort(bad)
	for i, k := range bad {
		if l.full() {
			l.skip(len(bad) - i)
			return
		}
		report(k, closest(k, candidates))
	}
}

// err is nil when nothing was reported, else a code 7 error whose message
// starts with prefix.
func (l *errorList) err(prefix string) error {
	if l.count() == 0 {
		return nil
	}
	msg := prefix + strings.Join(l.errs, "; ")
	if l.more > 0 {
		msg += fmt.Sprintf("; and %d more", l.more)
	}
	return types.NewError(types.ErrInvalidNetworkConfig, msg, "")
}

// decode unmarshals a present field into dst and reports whether it did.
func (d *decoder) decode(path string, raw json.RawMessage, dst any, want string) bool {
	if !present(raw) {
		return false
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			// A nested field (ipam, dns, runtimeConfig) is wrong: say which.
			d.errorf(path, "want %s, got %s (%s is not %s)", want, describe(raw), clip(te.Field), te.Type)
		} else {
			d.errorf(path, "want %s, got %s", want, describe(raw))
		}
		return false
	}
	return true
}

func (d *decoder) boolean(path string, raw json.RawMessage, dst *bool) bool {
	return d.decode(path, raw, dst, "true or false")
}

func (d *decoder) duration(path string, raw json.RawMessage, dst *time.Duration) bool {
	const want = `a positive Go duration such as "30s", "500ms" or "1m30s"`
	var s string
	if !d.decode(path, raw, &s, want) {
		return false
	}
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		d.errorf(path, "want %s, got %q", want, clip(s))
		return false
	}
	*dst = v
	return true
}

// timeout decodes a duration that bounds a whole ADD, which must fit in the
// runtime's sandbox budget; it reports whether dst was set.
func (d *decoder) timeout(path string, raw json.RawMessage, dst *time.Duration) bool {
	var v time.Duration
	if !d.duration(path, raw, &v) {
		return false
	}
	if v > MaxTimeout {
		d.errorf(path, "%s is more than the maximum %s: the whole ADD must fit in the runtime's sandbox budget", v, MaxTimeout)
		return false
	}
	*dst = v
	return true
}

func (d *decoder) onTimeout(path string, raw json.RawMessage, dst *OnTimeout) {
	var s string
	if !d.decode(path, raw, &s, `"fail" or "allow"`) {
		return
	}
	switch OnTimeout(s) {
	case Fail, Allow:
		*dst = OnTimeout(s)
	default:
		d.errorf(path, `want "fail" (CNI error 11, the kubelet retries) or "allow" (pass, log a warning), got %q`, clip(s))
	}
}

// stringList decodes a list of strings; ok is false if the field is absent or wrong.
func (d *decoder) stringList(path string, raw json.RawMessage, noun string) (list []string, ok bool) {
	var elems []json.RawMessage
	if !d.decode(path, raw, &elems, "a list of "+noun) {
		return nil, false
	}
	ok = true
	for i, e := range elems {
		var s string
		if kind(e) != '"' || json.Unmarshal(e, &s) != nil {
			d.errorf(fmt.Sprintf("%s[%d]", path, i), "want a string, got %s", describe(e))
			ok = false
		}
		list = append(list, s)
	}
	return list, ok
}

// probes parses a list of probe URLs; nil if absent or wrong.
func (d *decoder) probes(path string, raw json.RawMessage) []Probe {
	urls, ok := d.stringList(path, raw, "probe URLs")
	if !ok {
		return nil
	}
	origin := "config"
	if path != "probes" {
		origin = strings.TrimSuffix(path, ".probes")
	}
	ps := make([]Probe, 0, len(urls))
	first := make(map[string]int, len(urls))
	for i, u := range urls {
		if d.full() {
			d.skip(len(urls) - i)
			break
		}
		p, err := ParseProbe(u)
		at := fmt.Sprintf("%s[%d]", path, i)
		if err != nil {
			d.errorf(at, "%v", err)
			continue
		}
		if j, dup := first[p.URL]; dup {
			d.errorf(at, "%s is %s[%d] again", p.URL, path, j)
			continue
		}
		first[p.URL] = i
		p.Origin = origin
		ps = append(ps, p)
	}
	return ps
}

// object decodes a JSON object and reports the keys it does not know.
func (d *decoder) object(path string, raw json.RawMessage, known []string) map[string]json.RawMessage {
	var m map[string]json.RawMessage
	if kind(raw) != '{' || json.Unmarshal(raw, &m) != nil {
		d.errorf(path, "want an object, got %s", describe(raw))
		return nil
	}
	d.unknownFields(path, m, known, false)
	return m
}

// unknownFields reports every key outside known, because a misspelt field
// (probe for probes) would otherwise silently disable a gate. The plugin
// object also carries what CNI defines and what runtimes inject: the CNI
// fields and any namespaced key (holding '.' or '/').
func (d *decoder) unknownFields(path string, m map[string]json.RawMessage, known []string, plugin bool) {
	candidates := known
	if plugin {
		candidates = append(slices.Clip(known), cniFields...)
	}
	accepted := func(k string) bool {
		return slices.Contains(known, k) || plugin && (slices.Contains(cniFields, k) || strings.ContainsAny(k, "./"))
	}
	d.unknown(maps.Keys(m), accepted, candidates, func(k, hint string) {
		field := k
		if path != "" {
			field = path + "." + k
		}
		if hint != "" {
			d.errorf(field, "unknown field; did you mean %q?", hint)
		} else {
			d.errorf(field, "unknown field; netready knows %s", strings.Join(known, ", "))
		}
	})
}

var separators = strings.NewReplacer("_", "", "-", "", " ", "")

// closest returns the candidate that k is an obvious misspelling of, or "".
func closest(k string, candidates []string) string {
	norm := func(s string) string { return strings.ToLower(separators.Replace(s)) }
	if len(k) > 40 {
		return ""
	}
	nk := norm(k)
	best, bestDist := "", 3
	for _, c := range candidates {
		nc := norm(c)
		if dist := editDistance(nk, nc); dist < bestDist && dist*3 <= len(nc) {
			best, bestDist = c, dist
		}
	}
	return best
}

// editDistance counts the insertions, deletions, substitutions and swaps of
// neighbours that turn a into b (optimal string alignment): "ipma" is one
// typing slip away from "ipam".
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// decodeObject decodes data as one JSON object; anything else is code 6.
func decodeObject(data []byte) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	err := json.Unmarshal(data, &m)
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("netready config: not JSON: %v (at byte %d)", se, se.Offset), "")
	case err != nil || m == nil:
		return nil, types.NewError(types.ErrDecodingFailure, "netready config: want a JSON object, got "+describe(data), "")
	}
	return m, nil
}

// present says whether a field is there: null counts as absent, as it does for encoding/json.
func present(raw json.RawMessage) bool {
	k := kind(raw)
	return k != 0 && k != 'n'
}

// kind is the first byte of a JSON value, which says its type.
func kind(raw json.RawMessage) byte {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return 0
	}
	return raw[0]
}

// describe names a JSON value for an error message, redacting what could be
// a probe URL's userinfo.
func describe(raw json.RawMessage) string {
	switch kind(raw) {
	case 0:
		return "nothing"
	case '"':
		var s string
		_ = json.Unmarshal(raw, &s)
		return fmt.Sprintf("the string %q", clip(s))
	case 't', 'f':
		return "the boolean " + string(bytes.TrimSpace(raw))
	case 'n':
		return "null"
	case '[':
		return "a list"
	case '{':
		return "an object"
	default:
		return "the number " + clip(string(bytes.TrimSpace(raw)))
	}
}

// isLabel reports whether s is a DNS-1123 label, the form of a namespace name.
func isLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// isPodPattern reports whether s is a pod name (a DNS-1123 subdomain's
// characters), '*' allowed anywhere.
func isPodPattern(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '*') {
			return false
		}
	}
	return true
}
