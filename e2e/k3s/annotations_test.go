package k3s

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/internal/logrec"
)

// TestAnnotations: a pod's netready.dev/probes and netready.dev/timeout reach netready through
// containerd (the io.kubernetes.cri.pod-annotations capability). netready's own config has no
// probe; the pod asks for the db and a 3 s timeout while the path is blocked: the failed ADD
// says so in the pod's event; once the path opens the ADD that passes logs the probe as coming
// from the annotation.
func TestAnnotations(t *testing.T) {
	n := need(t)
	ctx := t.Context()
	const ns = "e2e-annotations"
	if err := n.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	install(t, n, "30s")
	fault, err := n.Bed.BlockRouter(context.Background()) // not t.Context(): canceled before Cleanup lifts the fault
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fault.Unblock() })
	p := PodSpec{Namespace: ns, Name: "annotated", Annotations: map[string]string{
		"netready.dev/probes":  testbed.ProbeDB,
		"netready.dev/timeout": "3s",
	}}
	if err := n.Apply(ctx, p); err != nil {
		t.Fatal(err)
	}
	var msg string
	for deadline := time.Now().Add(time.Minute); msg == ""; {
		evs, _ := n.API.PodEvents(ctx, ns, p.Name)
		for _, e := range evs {
			if e.Reason == "FailedCreatePodSandBox" && notReadyAfter3s.MatchString(e.Message) {
				msg = e.Message
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failed ADD with the annotation's 3 s timeout within a minute: %s", n.describe(ctx, ns, p.Name))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(msg, testbed.ProbeDB) {
		t.Fatalf("the failed ADD does not name the annotation's probe %s: %s", testbed.ProbeDB, msg)
	}
	if _, err := fault.Unblock(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WaitPhase(ctx, ns, p.Name, 2*time.Minute, "Succeeded"); err != nil {
		t.Fatal(err)
	}
	lines := addLines(t, n, ns+"/"+p.Name)
	ok := slices.ContainsFunc(lines, func(l logLine) bool {
		return l.Outcome == "ready" && slices.Contains(l.Probes, logrec.Probe{URL: testbed.ProbeDB, Origin: "annotation"})
	})
	if !ok {
		t.Fatalf("no ready ADD with the probe from the annotation: %+v", lines)
	}
	t.Logf("the annotations reached netready: a failed ADD after 3 s (%d ADD lines), then a ready one probing %s (origin annotation)", len(lines), testbed.ProbeDB)
	figures.SetIn("annotations", "reached_netready", true)
}
