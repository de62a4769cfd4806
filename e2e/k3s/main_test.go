package k3s

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// node is the one K3s node of this test binary (nil when skipped: see skipReason).
var (
	node       *Node
	skipReason string
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	root, err := testbed.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "k3s:", err)
		return 1
	}
	ctx := context.Background()
	start := time.Now()
	n, skip, err := Start(ctx, root)
	code := 0
	switch {
	case err != nil:
		fmt.Fprintln(os.Stderr, "k3s: starting the node:", err)
		code = 1
	case skip != "":
		skipReason = skip
		code = m.Run()
	default:
		fmt.Fprintf(os.Stderr, "k3s: node up in %v (%s)\n", time.Since(start).Round(100*time.Millisecond), n.Dist.From)
		node = n
		code = m.Run()
		if os.Getenv("NETREADY_K3S_KEEP") != "" {
			fmt.Fprintln(os.Stderr, "k3s: NETREADY_K3S_KEEP set: stopping K3s anyway (the host must be restored); logs were in", n.Dir)
		}
	}
	if cerr := n.Close(); cerr != nil {
		fmt.Fprintln(os.Stderr, "k3s: cleanup:", cerr)
		code = 1
	}
	figures.write()
	return code
}

// need skips the test when the node is not up.
func need(t *testing.T) *Node {
	t.Helper()
	if node == nil {
		t.Skip(skipReason)
	}
	return node
}
