// Package report is the probe's report: what cmd/probe writes in its container and the tests
// read on the host.
package report

import (
	"encoding/json"
	"os"
	"path/filepath"
	"time"
)

// Report is one run of the probe.
type Report struct {
	Role        string    `json:"role"` // "app" or "init"
	Target      string    `json:"target"`
	StartedNS   int64     `json:"started_ns"` // process start, Unix ns (the host's clock)
	Attempts    []Attempt `json:"attempts"`
	Connected   bool      `json:"connected"`
	ConnectedNS int64     `json:"connected_ns,omitempty"` // end of the first successful attempt
}

// Attempt is one connect, from a fresh socket.
type Attempt struct {
	StartNS int64  `json:"start_ns"`
	EndNS   int64  `json:"end_ns"`
	Error   string `json:"error,omitempty"`
}

// Started is StartedNS as a time.
func (r *Report) Started() time.Time { return time.Unix(0, r.StartedNS) }

// ConnectedAt is ConnectedNS as a time (zero if never connected).
func (r *Report) ConnectedAt() time.Time {
	if !r.Connected {
		return time.Time{}
	}
	return time.Unix(0, r.ConnectedNS)
}

// FirstFailed reports whether the first attempt failed.
func (r *Report) FirstFailed() bool { return len(r.Attempts) == 0 || r.Attempts[0].Error != "" }

// Write writes r to path through a temp file and a rename, so that a reader polling for path
// never sees half of it.
func Write(path string, r *Report) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Read parses a report.
func Read(b []byte) (*Report, error) {
	var r Report
	return &r, json.Unmarshal(b, &r)
}
