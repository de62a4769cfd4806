package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/netready/netready/e2e/testbed"
	"github.com/netready/netready/internal/logrec"
)

// readLog returns netready's ADD records by container id.
func readLog(path string) (map[string]logrec.Record, error) {
	recs := map[string]logrec.Record{}
	err := eachLine(path, func(line []byte) error {
		r, err := logrec.Parse(line)
		if err != nil {
			return fmt.Errorf("netready's log %s: %w", path, err)
		}
		if r.Verb == "ADD" {
			recs[r.Container] = r
		}
		return nil
	})
	return recs, err
}

// rusageRecord is one line the rusage wrapper (e2e/bench/rusage) appends.
type rusageRecord struct {
	Verb      string `json:"verb"`
	Container string `json:"container"`
	Exit      int    `json:"exit"`
	MaxRSSKB  int64  `json:"maxrss_kb"`
	UtimeUS   int64  `json:"utime_us"`
	StimeUS   int64  `json:"stime_us"`
	WallUS    int64  `json:"wall_us"`
	NVCSW     int64  `json:"nvcsw"`
	NIVCSW    int64  `json:"nivcsw"`
}

func (r rusageRecord) cpuMS() float64 { return float64(r.UtimeUS+r.StimeUS) / 1000 }

// childrenCPU is the CPU time of this process's children (and theirs) that have been waited
// for: every plugin process libcni ran, with what they ran.
func childrenCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// readRusage returns the wrapper's ADD records by container id.
func readRusage(path string) (map[string]rusageRecord, error) {
	recs := map[string]rusageRecord{}
	err := eachLine(path, func(line []byte) error {
		var r rusageRecord
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("%s: %w: %s", path, err, line)
		}
		if r.Verb == "ADD" {
			recs[r.Container] = r
		}
		return nil
	})
	return recs, err
}

func eachLine(path string, fn func([]byte) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		if line := bytes.TrimSpace(s.Bytes()); len(line) > 0 {
			if err := fn(line); err != nil {
				return err
			}
		}
	}
	return s.Err()
}

// nftCounters are named nft counters in the forward hook of a netns (the router), ahead of the
// fault's drop rule (priority filter - 10 runs before filter), for the pods' packets to the db:
// tcp_db counts every TCP packet to its port 5432 (a probe attempt is one SYN: attempts are closed
// long before the kernel's first retransmission), icmp_db every echo request.
type nftCounters struct {
	ns    *testbed.Netns
	table string
}

func (c nftCounters) install(ctx context.Context) error {
	script := fmt.Sprintf(`table inet %[1]s
delete table inet %[1]s
table inet %[1]s {
	counter tcp_db { }
	counter icmp_db { }
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		ip saddr %[2]s ip daddr %[3]s tcp dport %[4]d counter name "tcp_db"
		ip saddr %[2]s ip daddr %[3]s icmp type echo-request counter name "icmp_db"
	}
}
`, c.table, testbed.ClusterCIDR, testbed.DBAddr, testbed.TCPPort)
	_, err := c.ns.ExecInput(ctx, script, "nft", "-f", "-")
	return err
}

// remove deletes the table (the router netns goes with the bed anyway).
func (c nftCounters) remove() error {
	_, err := c.ns.Exec(context.Background(), "nft", "delete", "table", "inet", c.table)
	return err
}

// read returns the packet count of each counter and when it was read.
func (c nftCounters) read(ctx context.Context) (map[string]int64, time.Time, error) {
	out, err := c.ns.Exec(ctx, "nft", "-j", "list", "counters", "table", "inet", c.table)
	at := time.Now()
	if err != nil {
		return nil, at, err
	}
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets int64  `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, at, fmt.Errorf("nft -j list counters: %w: %s", err, out)
	}
	counts := map[string]int64{}
	for _, e := range doc.Nftables {
		if e.Counter != nil {
			counts[e.Counter.Name] = e.Counter.Packets
		}
	}
	if len(counts) != 2 {
		return nil, at, errors.New("nft -j list counters: expected tcp_db and icmp_db, got " + string(out))
	}
	return counts, at, nil
}

// tailBuffer keeps the last max bytes written: the plugins' stderr, shown when a stage fails.
type tailBuffer struct {
	max int
	mu  sync.Mutex
	// guarded by mu
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
