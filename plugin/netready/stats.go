package main

import (
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/netready/netready/pkg/waitstats"
)

// defaultLog is where installed configs log (netready install, the Helm chart).
const defaultLog = "/var/log/netready/netready.log"

// cliStats prints how long pods waited, from the log and its rotated generations.
func cliStats(args []string, stdout, stderr io.Writer, now time.Time) int {
	fs := flag.NewFlagSet("stats", flag.ContinueOnError)
	fs.SetOutput(stderr)
	logPath := fs.String("log", defaultLog, "netready's log file (its rotated FILE.1, FILE.2 … are read too)")
	since := fs.Duration("since", 0, "only records of the last DUR (e.g. 1h); 0: all")
	top := fs.Int("top", 10, "how many of the slowest pods to list")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 || *since < 0 || *top < 0 {
		fmt.Fprintf(stderr, "netready stats: want [--log FILE] [--since DUR] [--top N], durations and N not negative; got %q\n", args)
		return exitUsage
	}
	var from time.Time
	if *since > 0 {
		from = now.Add(-*since)
	}
	recs, bad, err := waitstats.ReadLog(*logPath, from)
	if err != nil {
		fmt.Fprintf(stderr, "netready stats: %v (the log is the logFile of netready's config; pass it with --log)\n", err)
		return exitCannot
	}
	if bad > 0 {
		fmt.Fprintf(stderr, "netready stats: %d lines of %s are not netready records; skipped\n", bad, *logPath)
	}
	if err := waitstats.Summarize(recs, *top).WriteTable(stdout); err != nil {
		fmt.Fprintf(stderr, "netready stats: %v\n", err)
		return exitCannot
	}
	return exitReady
}
