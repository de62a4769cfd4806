package main

import (
	"fmt"
	"os"
	"testing"

	"github.com/netready/netready/pkg/podcheck"
)

// TestMain gives the tests a coordination directory of their own, removed
// at the end, instead of the node's /run/netready.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", fmt.Sprintf("nr-%d-run-", os.Getpid()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv(podcheck.RunDirEnv, dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
