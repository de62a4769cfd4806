package k3s

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/netready/netready/e2e/testbed"
)

// The one K3s node of this test binary: started by the first test that needs it (so that
// `-run` of the pure tests starts nothing), stopped after all tests.
var (
	nodeOnce   sync.Once
	node       *Node
	skipReason string
	startErr   error
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	code := m.Run()
	if cerr := node.Close(); cerr != nil {
		fmt.Fprintln(os.Stderr, "k3s: cleanup:", cerr)
		code = 1
	}
	figures.write()
	return code
}

// need returns the node, starting it on first use; it skips the test when this machine cannot
// run K3s, and fails it when K3s did not come up.
func need(t *testing.T) *Node {
	t.Helper()
	nodeOnce.Do(func() {
		root, err := testbed.ModuleRoot()
		if err != nil {
			startErr = err
			return
		}
		start := time.Now()
		n, skip, err := Start(context.Background(), root)
		switch {
		case err != nil:
			startErr = fmt.Errorf("starting the K3s node: %w", err)
			node = n // Close undoes what was done
		case skip != "":
			skipReason = skip
		default:
			fmt.Fprintf(os.Stderr, "k3s: node up in %v (%s)\n", time.Since(start).Round(100*time.Millisecond), n.Dist.From)
			node = n
		}
	})
	switch {
	case startErr != nil:
		t.Fatal(startErr)
	case skipReason != "":
		t.Skip(skipReason)
	}
	return node
}
