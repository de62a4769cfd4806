package config

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// defaultPort is the port a probe URL may leave out; tcp has none, icmp none at all.
var defaultPort = map[Scheme]uint16{DNS: 53, HTTP: 80, HTTPS: 443}

// ParseProbe parses one probe URL, the syntax shared by the conflist, rules,
// pod annotations and the CLI:
//
//	icmp://IP
//	tcp://IP:PORT[?refused=ok]
//	dns://IP[:PORT]/NAME[?type=A|AAAA]
//	http://IP[:PORT][/PATH][?status=CODE|MIN-MAX]
//	https://IP[:PORT][/PATH][?status=CODE|MIN-MAX]
//
// Hosts are IP literals because netready runs before the pod has DNS.
//
// Probe.URL is canonical, so that two spellings of one probe are one probe
// (duplicates are found by URL) and so that logs show one form:
//   - the scheme is lower case and the address is in net/netip's text form
//     (IPv6 lower case, compressed, in brackets);
//   - userinfo is dropped: a probe checks reachability and never logs in (an
//     endpoint behind basic auth answers 401, which ?status=200-401 accepts);
//     it never reaches an error message either;
//   - tcp always carries its port (it has no default); dns, http and https carry
//     it only when it is not the default (53, 80, 443);
//   - dns's path is the name in lower case without the trailing dot;
//   - http(s) keep the escaped path and the query as written, empty parameters
//     dropped, "/" for an empty path;
//   - netready's own parameters (refused, type, status) come last, and only
//     when they differ from the default.
//
// ParseProbe(p.URL) returns p again.
func ParseProbe(s string) (Probe, error) {
	s = strings.TrimSpace(s)
	p, err := parseProbe(s)
	if err != nil {
		return Probe{}, fmt.Errorf("probe %q: %w", clip(s), err)
	}
	return p, nil
}

func parseProbe(s string) (Probe, error) {
	const want = "want scheme://IP..., such as tcp://10.0.0.5:5432 or icmp://10.0.0.1"
	if !strings.Contains(s, "://") {
		return Probe{}, errors.New("not a probe URL; " + want)
	}
	// A '@' may sit in a password that url.Parse then misreads as host or path:
	// with one present, echo nothing url.Parse saw.
	hasAt := strings.Contains(s, "@")
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) && !hasAt {
			return Probe{}, fmt.Errorf("not a valid URL (%v); %s", ue.Err, want)
		}
		return Probe{}, errors.New("not a valid URL; " + want)
	}
	p := Probe{Scheme: Scheme(u.Scheme)} // url.Parse lower-cases the scheme
	switch p.Scheme {
	case ICMP, TCP, DNS, HTTP, HTTPS:
	default:
		return Probe{}, fmt.Errorf("unknown scheme %q; use icmp, tcp, dns, http or https", clip(u.Scheme))
	}
	if u.Opaque != "" || u.Hostname() == "" {
		return Probe{}, errors.New("no host; " + want)
	}
	if strings.Contains(s, " ") {
		// url.Parse lets a space through in a path or query, where no server expects one.
		return Probe{}, errors.New("a space in a URL must be written %20")
	}
	if strings.Contains(s, "#") {
		return Probe{}, errors.New("a fragment (#...) is never sent to the target; remove it")
	}
	if err := p.setTarget(u, hasAt); err != nil {
		return Probe{}, err
	}

	path := u.EscapedPath()
	switch p.Scheme {
	case ICMP, TCP:
		if path != "" && path != "/" {
			return Probe{}, fmt.Errorf("%s takes no path", p.Scheme)
		}
	case DNS:
		if p.Name, err = dnsName(strings.TrimPrefix(u.Path, "/")); err != nil {
			return Probe{}, err
		}
		p.QType = "A"
	case HTTP, HTTPS:
		if path == "" {
			path = "/"
		}
		p.StatusMin, p.StatusMax = 200, 399
	}
	kept, err := p.setParams(u.RawQuery)
	if err != nil {
		return Probe{}, err
	}
	p.setURL(path, kept)
	return p, nil
}

// setTarget sets the address and port from the URL's host, which must be an
// IP literal.
func (p *Probe) setTarget(u *url.URL, hasAt bool) error {
	if !strings.HasPrefix(u.Host, "[") && strings.Count(u.Host, ":") > 1 {
		return errors.New("an IPv6 address needs brackets, such as tcp://[fd00::5]:5432")
	}
	host, port := u.Hostname(), u.Port()
	addr, err := netip.ParseAddr(host)
	if err != nil {
		if hasAt && u.User == nil {
			return errors.New("host is not an IP address; probes need an IP literal (netready runs before DNS works)")
		}
		ex := url.URL{Scheme: u.Scheme, Host: "10.0.0.5", Path: u.Path, RawPath: u.RawPath, RawQuery: u.RawQuery}
		if port != "" {
			ex.Host += ":" + port
		}
		return fmt.Errorf("host %q is not an IP address; probes need an IP literal such as %s (netready runs before DNS works)",
			clip(host), clip(ex.String()))
	}
	if err := checkAddr(addr); err != nil {
		return err
	}
	p.Addr = addr

	if strings.HasSuffix(u.Host, ":") {
		return errors.New("empty port after ':'")
	}
	switch {
	case port == "":
		p.Port = defaultPort[p.Scheme]
	case p.Scheme == ICMP:
		return errors.New("icmp has no port; write icmp://" + hostText(addr))
	default:
		n, err := strconv.ParseUint(port, 10, 16) // url.Parse let only digits through
		if err != nil || n == 0 {
			return fmt.Errorf("port %s out of range 1-65535", clip(port))
		}
		p.Port = uint16(n)
	}
	if p.Port == 0 && p.Scheme == TCP {
		return fmt.Errorf("tcp needs a port, such as tcp://%s:5432", hostText(addr))
	}
	return nil
}

// setParams reads netready's own query parameter (ownParam) and returns the
// others, which only http(s) accept: they belong to the target.
func (p *Probe) setParams(rawQuery string) (kept []string, err error) {
	seen := map[string]bool{}
	for part := range strings.SplitSeq(rawQuery, "&") {
		if part == "" {
			continue
		}
		rawKey, rawVal, _ := strings.Cut(part, "=")
		key, err := url.QueryUnescape(rawKey)
		if err != nil {
			key = rawKey
		}
		if own, ok := ownParam[p.Scheme]; !ok || key != own {
			if p.Scheme == HTTP || p.Scheme == HTTPS {
				kept = append(kept, part)
				continue
			}
			return nil, fmt.Errorf("unknown parameter %q; %s", clip(key), paramHelp[p.Scheme])
		}
		if seen[key] {
			return nil, fmt.Errorf("parameter %q given twice", key)
		}
		seen[key] = true
		val, err := url.QueryUnescape(rawVal)
		if err != nil {
			val = rawVal
		}
		switch key {
		case "refused":
			if val != "ok" {
				return nil, fmt.Errorf("refused=%s: the only value is refused=ok", clip(val))
			}
			p.RefusedOK = true
		case "type":
			switch strings.ToUpper(val) {
			case "A", "AAAA":
				p.QType = strings.ToUpper(val)
			default:
				return nil, fmt.Errorf("type=%s: want type=A or type=AAAA", clip(val))
			}
		case "status":
			if p.StatusMin, p.StatusMax, err = parseStatus(val); err != nil {
				return nil, err
			}
		}
	}
	return kept, nil
}

// setURL sets the canonical URL (see ParseProbe) and, for http(s), the Host
// and Path the request carries.
func (p *Probe) setURL(path string, kept []string) {
	hostport := hostText(p.Addr)
	if p.Port != defaultPort[p.Scheme] {
		hostport += ":" + strconv.Itoa(int(p.Port))
	}
	p.URL = string(p.Scheme) + "://" + hostport
	switch p.Scheme {
	case TCP:
		if p.RefusedOK {
			p.URL += "?refused=ok"
		}
	case DNS:
		p.URL += "/" + strings.TrimSuffix(p.Name, ".")
		if p.QType != "A" {
			p.URL += "?type=" + p.QType
		}
	case HTTP, HTTPS:
		p.Host = hostport
		p.Path = path
		if len(kept) > 0 {
			p.Path += "?" + strings.Join(kept, "&")
		}
		p.URL += p.Path
		if p.StatusMin != 200 || p.StatusMax != 399 {
			sep := "?"
			if len(kept) > 0 {
				sep = "&"
			}
			p.URL += sep + "status=" + strconv.Itoa(p.StatusMin)
			if p.StatusMax != p.StatusMin {
				p.URL += "-" + strconv.Itoa(p.StatusMax)
			}
		}
	}
}

// ownParam is the query parameter netready reads for a scheme; http(s) send the others on.
var ownParam = map[Scheme]string{TCP: "refused", DNS: "type", HTTP: "status", HTTPS: "status"}

var paramHelp = map[Scheme]string{
	ICMP: "icmp takes no parameters",
	TCP:  "tcp accepts refused=ok",
	DNS:  "dns accepts type=A or type=AAAA",
}

// checkAddr rejects addresses that are not one host a pod can reach.
func checkAddr(a netip.Addr) error {
	switch {
	case a.Zone() != "":
		return fmt.Errorf("IPv6 zone %q not allowed: the probe runs in the pod, whose interfaces have other names", clip(a.Zone()))
	case a.Is4In6():
		return fmt.Errorf("IPv4-mapped address %s; write %s", a, a.Unmap())
	case a.IsUnspecified():
		return fmt.Errorf("unspecified address %s is not a target", a)
	case a.IsMulticast():
		return fmt.Errorf("multicast address %s is not a target; a probe needs one host", a)
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("broadcast address %s is not a target; a probe needs one host", a)
	case a.Is6() && a.IsLinkLocalUnicast():
		// Linux needs a scope id to send to fe80::/10, and a zone cannot be named from the node.
		return fmt.Errorf("link-local address %s cannot be probed without an interface zone; use a global or ULA address", a)
	}
	return nil
}

func hostText(a netip.Addr) string {
	if a.Is6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}

// dnsName returns name lower-cased and fully qualified, or why it is no DNS name.
func dnsName(name string) (string, error) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name == "" {
		return "", errors.New("dns needs a name to query, such as dns://10.43.0.10/kubernetes.default.svc.cluster.local")
	}
	if len(name) > 253 {
		return "", fmt.Errorf("name is %d characters long; DNS allows 253", len(name))
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("name %q: each label needs 1 to 63 characters", clip(name))
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return "", fmt.Errorf("name %q holds %q; DNS names use letters, digits, '-' and '_'", clip(name), r)
			}
		}
	}
	return name + ".", nil
}

// parseStatus reads "CODE" or "MIN-MAX".
func parseStatus(v string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(v, "-")
	lo, err = strconv.Atoi(a)
	hi = lo
	if err == nil && isRange {
		hi, err = strconv.Atoi(b)
	}
	if err != nil || lo < 100 || hi > 599 || lo > hi {
		return 0, 0, fmt.Errorf("status=%s: want a code or MIN-MAX, codes 100-599 and MIN <= MAX, such as status=204 or status=200-299", clip(v))
	}
	return lo, hi, nil
}

// redact hides whatever may be userinfo. It reaches the last '@' rather than
// stopping where RFC 3986 ends the authority, because a password holding a
// '/', '?' or '#' must not leak either; an '@' in a path only costs some
// readability in an error message.
func redact(s string) string {
	start := 0
	if i := strings.Index(s, "://"); i >= 0 {
		start = i + 3
	}
	at := strings.LastIndexByte(s[start:], '@')
	if at < 0 {
		return s
	}
	return s[:start] + "xxxxx@" + s[start+at+1:]
}

// clip prepares a value the user wrote for an error message: redacted, since
// any string may be a misplaced probe URL, and short, since a person reads it.
func clip(s string) string {
	const max = 120
	s = redact(s)
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
