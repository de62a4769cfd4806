package config

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// The pod annotations netready reads, when the conflist's annotations.allow
// lets it and the runtime passes them (the io.kubernetes.cri.pod-annotations
// capability).
const (
	AnnotationProbes  = "netready.dev/probes"  // comma-separated probe URLs, added to the configured ones
	AnnotationTimeout = "netready.dev/timeout" // a Go duration, at most annotations.maxTimeout
	AnnotationSkip    = "netready.dev/skip"    // "true" passes the pod ungated, with annotations.allowSkip
)

const annotationPrefix = "netready.dev/"

// Redact removes from msg, bound for the node's log, the values of the pod's
// netready annotations that netready's messages quote: the runtime shows the
// whole message to the pod's owner, who wrote them, but others may read the
// log. The probes' value is left: its URLs lose their userinfo when parsed.
// Only quoted values go ("3s", the way a message quotes one), so that a
// timeout of 3s takes nothing from "after 3.003s" or "K3s"; and only
// netready's annotations, the only values netready reads, so that a pod's
// `example.com/enabled: "true"` does not blank every "true" in the line.
func (p Pod) Redact(msg string) string {
	for k, v := range p.Annotations {
		if v == "" || k == AnnotationProbes || !strings.HasPrefix(k, annotationPrefix) {
			continue
		}
		// As the messages quote it: whole, or clipped (redacted and cut short).
		for _, q := range []string{strconv.Quote(v), strconv.Quote(clip(v))} {
			msg = strings.ReplaceAll(msg, q, `"<redacted>"`)
		}
	}
	return msg
}

// Pod is what Resolve knows of a pod.
type Pod struct {
	Namespace, Name string
	// UID is K8S_POD_UID, which tells this pod from one re-created under
	// the same name; "" when the runtime did not say.
	UID         string
	Annotations map[string]string
}

// Pod returns the pod that cniArgs (CNI_ARGS) names through K8S_POD_NAMESPACE
// and K8S_POD_NAME (and K8S_POD_UID), as containerd and CRI-O set them for
// Kubernetes sandboxes, with the annotations the runtime passed in
// runtimeConfig. Other keys (IgnoreUnknown, ...) are ignored, in any order. Outside
// Kubernetes both names are empty, which no skip entry or rule matches. A
// pair without '=' or a name given twice is an error (code 4) naming CNI_ARGS.
func (c *Conf) Pod(cniArgs string) (Pod, error) {
	pod := Pod{Annotations: c.RuntimeConfig.PodAnnotations}
	var seenNS, seenName, seenUID bool
	for pair := range strings.SplitSeq(cniArgs, ";") {
		if pair == "" {
			continue // "a=b;" from a runtime that ends every pair with ';'
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok || k == "" {
			return Pod{}, types.NewError(types.ErrInvalidEnvironmentVariables,
				fmt.Sprintf("CNI_ARGS: %q is not KEY=VALUE; want pairs such as K8S_POD_NAMESPACE=default;K8S_POD_NAME=web", clip(pair)), "")
		}
		var seen *bool
		switch k {
		case "K8S_POD_NAMESPACE":
			pod.Namespace, seen = v, &seenNS
		case "K8S_POD_NAME":
			pod.Name, seen = v, &seenName
		case "K8S_POD_UID":
			pod.UID, seen = v, &seenUID
		default:
			continue
		}
		if *seen {
			return Pod{}, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_ARGS: %s given twice", k), "")
		}
		*seen = true
	}
	return pod, nil
}

// Resolve returns the spec the gate enforces for pod: the base spec, then
// the first rule that matches the pod, then the pod's annotations within the
// caps of the annotations policy. A pod that skip selects is Skipped before
// rules or annotations are looked at. The error (code 7) names each annotation
// at fault, its value and the cap it broke; the conflist itself was checked
// by Parse. The returned spec owns its Probes.
func (c *Conf) Resolve(pod Pod) (Spec, error) {
	s, err := c.resolve(pod)
	// An attempt never outlives the whole wait: a short timeout (in the
	// conflist, a rule or an annotation) shortens the attempts too.
	s.AttemptTimeout = min(s.AttemptTimeout, s.Timeout)
	return s, err
}

func (c *Conf) resolve(pod Pod) (Spec, error) {
	s := c.Base
	if field, entry, ok := c.Skip.match(pod); ok {
		s.Probes = slices.Clone(s.Probes)
		s.Skipped, s.SkipReason = true, fmt.Sprintf("skip.%s %q", field, entry)
		return s, nil
	}
	for i, r := range c.Rules {
		if _, _, ok := r.match(pod); ok {
			r.apply(&s)
			s.Rule = fmt.Sprintf("rules[%d]", i)
			break
		}
	}
	s.Probes = slices.Clone(s.Probes) // annotations append; Conf stays shared
	switch {
	case c.Annotations.Allow && len(pod.Annotations) > 0:
		if err := c.Annotations.apply(&s, pod.Annotations); err != nil {
			return Spec{}, err
		}
	case !c.Annotations.Allow:
		for k := range pod.Annotations {
			if strings.HasPrefix(k, annotationPrefix) {
				s.AnnotationsIgnored = true
			}
		}
	}
	return s, nil
}

// match returns the field and entry that select pod, for the log.
func (m Match) match(pod Pod) (field, entry string, ok bool) {
	for _, ns := range m.Namespaces {
		if ns == pod.Namespace {
			return "namespaces", ns, true
		}
	}
	for _, p := range m.Pods {
		// Pod patterns hold only a name's characters and '*' (checked at
		// parse), so path.Match's '?', '[' and '\\' never occur.
		if ns, name, _ := strings.Cut(p, "/"); ns == pod.Namespace && glob(name, pod.Name) {
			return "pods", p, true
		}
	}
	return "", "", false
}

func glob(pattern, name string) bool {
	ok, err := path.Match(pattern, name)
	return ok && err == nil
}

func (r Rule) apply(s *Spec) {
	if r.Probes != nil {
		s.Probes = r.Probes
	}
	if r.Timeout != 0 {
		s.Timeout = r.Timeout
	}
	if r.OnTimeout != "" {
		s.OnTimeout = r.OnTimeout
	}
	if r.Gateway != nil {
		s.Gateway = *r.Gateway
	}
	if r.DefaultRoute != nil {
		s.DefaultRoute = *r.DefaultRoute
	}
}

// apply adds what the annotations ask for to s, within the caps. An
// annotation that would loosen the admin's settings beyond a cap fails rather
// than being ignored, so that the pod's owner learns why at once.
func (a AnnotationPolicy) apply(s *Spec, ann map[string]string) error {
	var l annotationErrors
	l.unknown(ann)
	if v, ok := ann[AnnotationProbes]; ok {
		a.addProbes(s, v, &l)
	}
	if v, ok := ann[AnnotationTimeout]; ok {
		t, err := time.ParseDuration(v)
		switch {
		case err != nil || t <= 0:
			l.fail(AnnotationTimeout, `%q: want a positive Go duration such as "45s"`, clip(v))
		case t > a.MaxTimeout:
			l.fail(AnnotationTimeout, "%q is more than annotations.maxTimeout %s", v, a.MaxTimeout)
		default:
			s.Timeout = t
		}
	}
	if v, ok := ann[AnnotationSkip]; ok {
		switch v {
		case "false":
		case "true":
			if !a.AllowSkip {
				l.fail(AnnotationSkip, `"true" is not allowed: annotations.allowSkip is false in the netready config`)
			} else {
				s.Skipped, s.SkipReason = true, "annotation "+AnnotationSkip
			}
		default:
			l.fail(AnnotationSkip, `%q: want "true" or "false"`, clip(v))
		}
	}
	return l.err("netready: ")
}

// addProbes adds the probes of a netready.dev/probes value to s, up to
// annotations.maxProbes in all.
func (a AnnotationPolicy) addProbes(s *Spec, v string, l *annotationErrors) {
	var items []string
	for item := range strings.SplitSeq(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	// Even if every configured probe were repeated, this is too many: say
	// so before parsing thousands of URLs.
	if limit := a.MaxProbes + len(s.Probes); len(items) > limit {
		l.fail(AnnotationProbes, "lists %d probes, more than annotations.maxProbes %d", len(items), a.MaxProbes)
		return
	}
	have := make(map[string]bool, len(s.Probes)+len(items))
	for _, q := range s.Probes {
		have[q.URL] = true
	}
	added := 0
	for _, item := range items {
		p, err := ParseProbe(item)
		if err != nil {
			l.fail(AnnotationProbes, "%v", err)
			continue
		}
		// The pod's owner may not know what the node already checks:
		// asking again for a configured probe is harmless.
		if have[p.URL] {
			continue
		}
		have[p.URL] = true
		p.Origin = "annotation"
		s.Probes = append(s.Probes, p)
		added++
	}
	if added > 0 && len(s.Probes) > a.MaxProbes {
		l.fail(AnnotationProbes, "adds %d probes, %d in all, more than annotations.maxProbes %d", added, len(s.Probes), a.MaxProbes)
	}
}

// annotationErrors are a pod's annotation problems, each led by its key.
type annotationErrors struct{ errorList }

func (l *annotationErrors) fail(key, format string, args ...any) {
	l.addf("pod annotation %q: "+format, append([]any{clip(key)}, args...)...)
}

// unknown reports every netready.dev/ key netready does not read, with the
// closest known one: a typo must not silently drop a probe or a timeout.
func (l *annotationErrors) unknown(ann map[string]string) {
	known := []string{AnnotationProbes, AnnotationTimeout, AnnotationSkip}
	accepted := func(k string) bool { return !strings.HasPrefix(k, annotationPrefix) || slices.Contains(known, k) }
	l.errorList.unknown(maps.Keys(ann), accepted, known, func(k, hint string) {
		if hint != "" {
			l.fail(k, "unknown netready annotation; did you mean %q?", hint)
		} else {
			l.fail(k, "unknown netready annotation; netready reads %s", strings.Join(known, ", "))
		}
	})
}
