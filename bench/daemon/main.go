// Command daemon benchmarks the Cedana daemon against three bars, in one
// run, and prints a markdown table:
//
//	(a) idle overhead: the daemon's own CPU (% of one core) and peak RSS
//	    while it supervises 100 idle jobs, each checkpointed every 10 s,
//	    over 60 s (bars: < 5 %, < 100 MiB); with CRIU's CPU (bar ≤ 5 %),
//	    and the daemon's CPU per periodic checkpoint as a fraction of
//	    CRIU's (bar ≤ 5 %), with skip_unchanged safe and never;
//	(b) API latency: p50/p99 of ListJobs over 500 calls with 100 jobs
//	    and 10,000 checkpoints in the catalogue (bar: p99 < 50 ms);
//	(c) dump latency of a 256 MiB process through the daemon against the
//	    standalone client, median of 11 each (bar: within 5 %);
//	(d) deduplicated periodic checkpoints of a 1 GiB job rewriting 1 % of
//	    its memory per period: bytes stored per checkpoint (bar ≤ 5 % of
//	    memory), and the restore from the deduplicated store against the
//	    same checkpoint exported self-contained (bar ≤ 1.1×).
//
// It needs root and CRIU, like cedana itself. Run it through
// scripts/bench-daemon.sh, which builds what it needs. Every process it
// starts is killed by PID (checked against its start time) when it ends,
// also on SIGINT/SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// options are the benchmark's flags.
type options struct {
	cedana     string        // the cedana binary
	memhog     string        // bench/memhog.py
	work       string        // scratch dir on the disk to measure (removed at the end)
	only       string        // comma-separated subset of a,b,c
	jobs       int           // (a) idle jobs
	locks      string        // (a) network-lock settings to compare ("" = cedana's default)
	skip       string        // (a) policy.skip_unchanged settings to compare
	cluster    bool          // (a) cluster mode
	every      time.Duration // (a) checkpoint period of each job
	warmup     time.Duration // (a) time after the jobs start before measuring
	window     time.Duration // (a) measurement window
	catJobs    int           // (b) jobs in the catalogue
	catCkpts   int           // (b) checkpoints in the catalogue
	calls      int           // (b) timed ListJobs calls
	runs       int           // (c) dumps of each kind
	sizeMiB    int           // (c) memory of the dumped process
	dedupMiB   int           // (d) memory of the job
	dedupCkpts int           // (d) periodic checkpoints to take
	keepOnFail bool          // keep the work dir for inspection
}

func main() {
	var o options
	flag.StringVar(&o.cedana, "cedana", "bin/cedana", "cedana binary")
	flag.StringVar(&o.memhog, "memhog", "bench/memhog.py", "memory holder script")
	flag.StringVar(&o.work, "work", "/var/tmp/cedana-bench-daemon", "scratch directory (removed at the end)")
	flag.StringVar(&o.only, "only", "a,b,c", "parts to run: a (idle overhead), b (API latency), c (dump latency), d (deduplication)")
	flag.IntVar(&o.jobs, "jobs", 100, "(a) idle jobs")
	flag.DurationVar(&o.every, "every", 10*time.Second, "(a) checkpoint period of each idle job")
	flag.StringVar(&o.locks, "a-network-locks", "default,skip", `(a) run once per criu.network_lock setting ("default" = cedana's own choice)`)
	flag.StringVar(&o.skip, "a-skip-unchanged", "safe,never", `(a) run once per policy.skip_unchanged setting ("never" checkpoints every job every period)`)
	flag.BoolVar(&o.cluster, "a-cluster", false, "(a) run the daemon in cluster mode (embedded NATS, leases, shared storage)")
	flag.DurationVar(&o.warmup, "warmup", 5*time.Second, "(a) wait after starting the jobs (spread over one period) before measuring")
	flag.DurationVar(&o.window, "window", 60*time.Second, "(a) measurement window")
	flag.IntVar(&o.catJobs, "catalogue-jobs", 100, "(b) jobs in the catalogue")
	flag.IntVar(&o.catCkpts, "catalogue-checkpoints", 10000, "(b) checkpoints in the catalogue")
	flag.IntVar(&o.calls, "calls", 500, "(b) timed ListJobs calls")
	flag.IntVar(&o.runs, "runs", 11, "(c) dumps of each kind (their medians are compared; fewer swing by ±15 % on a 2-core VM)")
	flag.IntVar(&o.sizeMiB, "size-mib", 256, "(c) memory of the dumped process, MiB")
	flag.IntVar(&o.dedupMiB, "dedup-mib", 1024, "(d) memory of the job, MiB")
	flag.IntVar(&o.dedupCkpts, "dedup-checkpoints", 8, "(d) periodic checkpoints to take")
	flag.BoolVar(&o.keepOnFail, "keep", false, "keep the work dir")
	flag.Parse()

	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench-daemon: needs root (CRIU does)")
		os.Exit(5)
	}
	for _, p := range []*string{&o.cedana, &o.memhog} {
		abs, err := filepath.Abs(*p)
		if err == nil {
			*p = abs
		}
	}

	b := newBench(o)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rows, err := b.run(ctx)
	b.cleanup()
	printTable(os.Stdout, rows)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-daemon:", err)
		os.Exit(1)
	}
	for _, r := range rows {
		if r.verdict == fail {
			os.Exit(3)
		}
	}
}

// run runs the selected parts and returns the table's rows.
func (b *bench) run(ctx context.Context) ([]row, error) {
	if err := os.RemoveAll(b.o.work); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(b.o.work, 0o700); err != nil {
		return nil, err
	}
	var rows []row
	parts := []struct {
		name string
		fn   func(context.Context) ([]row, error)
	}{
		{"a", b.idle},
		{"b", b.listLatency},
		{"c", b.dumpLatency},
		{"d", b.dedup},
	}
	for _, p := range parts {
		if !strings.Contains(","+b.o.only+",", ","+p.name+",") {
			continue
		}
		start := time.Now()
		logf("part %s: starting", p.name)
		r, err := p.fn(ctx)
		rows = append(rows, r...)
		if err != nil {
			return rows, fmt.Errorf("part %s: %w", p.name, err)
		}
		logf("part %s: done in %s", p.name, time.Since(start).Round(100*time.Millisecond))
		b.stopAll() // each part leaves nothing running for the next
	}
	return rows, nil
}

// logf reports progress on stderr, so that stdout holds only the table.
func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, a...))
}
