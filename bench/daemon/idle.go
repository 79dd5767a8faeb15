package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	pb "github.com/cedana/cedana/api/cedana/v1"
)

// idle is part (a): the daemon's own CPU and memory while it supervises
// many idle jobs with periodic checkpoints, once per network-lock setting.
func (b *bench) idle(ctx context.Context) ([]row, error) {
	var rows []row
	for _, skip := range strings.Split(b.o.skip, ",") {
		for _, lock := range strings.Split(b.o.locks, ",") {
			r, err := b.idleWith(ctx, strings.TrimSpace(lock), strings.TrimSpace(skip))
			rows = append(rows, r...)
			if err != nil {
				return rows, err
			}
			b.stopAll()
		}
	}
	return rows, nil
}

// idleWith runs part (a) with criu.network_lock set to lock ("default":
// not set) and policy.skip_unchanged set to skip.
func (b *bench) idleWith(ctx context.Context, lock, skip string) ([]row, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	maddr := fmt.Sprintf("127.0.0.1:%d", port)
	cfg := map[string]any{"policy": map[string]any{"skip_unchanged": skip}}
	if lock != "default" && lock != "" {
		cfg["criu"] = map[string]any{"network_lock": lock}
	}
	name := "idle-" + lock + "-" + skip
	if b.o.cluster {
		// Cluster mode, embedded NATS: every job holds a lease renewed
		// each eighth of the node timeout, has a record the sync loop
		// reads each round, and checkpoints to a shared directory.
		nport, err := freePort()
		if err != nil {
			return nil, err
		}
		shared := filepath.Join(b.o.work, "shared")
		if err := os.MkdirAll(shared, 0o700); err != nil {
			return nil, err
		}
		cfg["cluster"] = map[string]any{"node": "bench", "nats_listen": fmt.Sprintf("127.0.0.1:%d", nport)}
		cfg["storage"] = map[string]any{"backend": "dir", "dir": map[string]any{"path": shared}}
		name += "-cluster"
	}
	d, err := b.startDaemon(ctx, name, filepath.Join(b.o.work, name+"-state"), maddr, cfg)
	if err != nil {
		return nil, err
	}
	// Start the jobs evenly over one period, as jobs started over time
	// would be, so that their periodic checkpoints do not all fall due at
	// the same instant.
	start := time.Now()
	gap := b.o.every / time.Duration(b.o.jobs)
	for i := range b.o.jobs {
		if err := sleepCtx(ctx, time.Until(start.Add(time.Duration(i)*gap))); err != nil {
			return nil, err
		}
		if _, _, err := d.runJob(b, "--name", fmt.Sprintf("idle-%03d", i), "--checkpoint-every", b.o.every.String(),
			"--", "sleep", "100000"); err != nil {
			return nil, err
		}
	}
	logf("part a (network lock %s): %d jobs started over %s; warming up for %s", lock, b.o.jobs,
		time.Since(start).Round(time.Millisecond), b.o.warmup)
	if err := sleepCtx(ctx, b.o.warmup); err != nil {
		return nil, err
	}
	// Steady state: every job has its first checkpoint (on a busy machine
	// the first round can take longer than the period); measuring earlier
	// would count first checkpoints, which are never skipped.
	waitStart := time.Now()
	for time.Since(waitStart) < 3*time.Minute {
		resp, err := d.client.ListJobs(ctx, &pb.ListJobsRequest{})
		if err != nil {
			return nil, err
		}
		done := 0
		for _, j := range resp.GetJobs() {
			if j.GetLastCheckpointId() != "" {
				done++
			}
		}
		if done == len(resp.GetJobs()) {
			break
		}
		if err := sleepCtx(ctx, time.Second); err != nil {
			return nil, err
		}
	}
	logf("part a (network lock %s, skip_unchanged %s): every job had its first checkpoint after %s more",
		lock, skip, time.Since(waitStart).Round(time.Second))

	pid := d.pid()
	m0 := scrape(maddr)
	s0, err := readStat(pid)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	var maxRSS uint64
	logf("part a (network lock %s): measuring for %s", lock, b.o.window)
	for time.Since(t0) < b.o.window {
		maxRSS = max(maxRSS, statusKiB(pid, "VmRSS"))
		if err := sleepCtx(ctx, time.Second); err != nil {
			return nil, err
		}
	}
	s1, err := readStat(pid)
	if err != nil {
		return nil, err
	}
	wall := time.Since(t0).Seconds()
	maxRSS = max(maxRSS, statusKiB(pid, "VmRSS"))
	hwm := statusKiB(pid, "VmHWM")
	m1 := scrape(maddr)

	running := 0
	if resp, err := d.client.ListJobs(ctx, &pb.ListJobsRequest{}); err == nil {
		for _, j := range resp.GetJobs() {
			if j.GetState() == "running" || j.GetState() == "dumping" {
				running++
			}
		}
	}

	hz := clockTicks()
	own := float64(s1.utime+s1.stime-s0.utime-s0.stime) / hz / wall * 100
	all := own + float64(s1.cutime+s1.cstime-s0.cutime-s0.cstime)/hz/wall*100
	dumps := m1.dumpCount - m0.dumpCount
	mean := func(sum0, sum1, n0, n1 float64) string {
		if n1 == n0 {
			return "n/a"
		}
		return fmt.Sprintf("%.3f s", (sum1-sum0)/(n1-n0))
	}
	expected := float64(b.o.jobs) * wall / b.o.every.Seconds()
	label := fmt.Sprintf("%d idle jobs, checkpoint every %s, %.0f s, network lock %s, skip_unchanged %s", b.o.jobs, b.o.every, wall, lock, skip)
	children := float64(s1.cutime+s1.cstime-s0.cutime-s0.cstime) / hz
	ratio := func(daemon, criu float64) string {
		if criu <= 0 {
			return "n/a (no checkpoint)"
		}
		return fmt.Sprintf("%.1f %%", 100*daemon/criu)
	}
	perCkpt := m1.daemonCPU - m0.daemonCPU
	criuCPU := m1.criuCPU - m0.criuCPU
	ownCPU := own * wall / 100
	// The ratio's bar applies where every job is checkpointed: with
	// skipping, the daemon's supervision is divided by a few checkpoints.
	ratioBar, ratioVerdict := "≤ 5 % (first figure)", verdictOf(criuCPU <= 0 || ownCPU/criuCPU <= 0.05)
	if skip != "never" {
		ratioBar, ratioVerdict = "(info: few checkpoints)", info
	}
	return []row{
		{part: "a", what: "daemon CPU, own (utime+stime); " + label, value: fmt.Sprintf("%.2f %% of one core", own),
			bar: "< 5 %", verdict: verdictOf(own < 5)},
		{part: "a", what: "daemon max RSS (VmRSS sampled each second / VmHWM); " + label,
			value: fmt.Sprintf("%.1f MiB / %.1f MiB", float64(maxRSS)/1024, float64(hwm)/1024),
			bar:   "< 100 MiB", verdict: verdictOf(max(maxRSS, hwm) < 100*1024)},
		{part: "a", what: "daemon CPU incl. reaped children (CRIU: cutime+cstime)", value: fmt.Sprintf("%.1f %% of one core", all),
			bar: "≤ 5 % (issue 15)", verdict: verdictOf(all <= 5)},
		{part: "a", what: "daemon CPU per periodic checkpoint ÷ CRIU's: the daemon's whole CPU in the window ÷ CRIU's (cedana_checkpoint_cpu_seconds_total{who=criu}) / ÷ reaped children (cutime+cstime) / per checkpoint, summed (an upper bound: concurrent work counted twice)",
			value: fmt.Sprintf("%s / %s / %s", ratio(ownCPU, criuCPU), ratio(ownCPU, children), ratio(perCkpt, criuCPU)),
			bar:   ratioBar, verdict: ratioVerdict},
		{part: "a", what: "periodic runs in the window (per s): checkpoints completed, unchanged (skipped), failed; mean dump / mean CRIU frozen; jobs running (or dumping) at the end",
			value: fmt.Sprintf("%.0f of %.0f due (%.1f/s): %.0f checkpoints, %.0f unchanged, %.0f failed; %s / %s; %d/%d running",
				dumps+m1.unchanged-m0.unchanged, expected, (dumps+m1.unchanged-m0.unchanged)/wall, dumps, m1.unchanged-m0.unchanged,
				m1.dumpFailed-m0.dumpFailed, mean(m0.dumpSum, m1.dumpSum, m0.dumpCount, m1.dumpCount),
				mean(m0.frozenSum, m1.frozenSum, m0.frozenCount, m1.frozenCount), running, b.o.jobs),
			bar: "sanity: ≥ 90 % of those due", verdict: verdictOf(dumps+m1.unchanged-m0.unchanged >= 0.9*expected)},
	}, nil
}

// metricsSample holds the daemon's dump metrics at one moment.
type metricsSample struct {
	dumpCount, dumpSum, dumpFailed, frozenCount, frozenSum float64
	unchanged, daemonCPU, criuCPU                          float64
}

var metricRE = regexp.MustCompile(`(?m)^(cedana_dump_duration_seconds_count|cedana_dump_duration_seconds_sum|cedana_criu_frozen_seconds_count|cedana_criu_frozen_seconds_sum|cedana_failures_total\{op="dump"\}|cedana_periodic_runs_total\{outcome="unchanged"\}|cedana_checkpoint_cpu_seconds_total\{kind="periodic",who="daemon"\}|cedana_checkpoint_cpu_seconds_total\{kind="periodic",who="criu"\}) (\S+)$`)

// scrape reads the dump metrics from /metrics (zeros if unavailable).
func scrape(addr string) metricsSample {
	var m metricsSample
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return m
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, sm := range metricRE.FindAllSubmatch(body, -1) {
		v, _ := strconv.ParseFloat(string(sm[2]), 64)
		switch string(sm[1]) {
		case "cedana_dump_duration_seconds_count":
			m.dumpCount = v
		case "cedana_dump_duration_seconds_sum":
			m.dumpSum = v
		case "cedana_criu_frozen_seconds_count":
			m.frozenCount = v
		case "cedana_criu_frozen_seconds_sum":
			m.frozenSum = v
		case `cedana_periodic_runs_total{outcome="unchanged"}`:
			m.unchanged = v
		case `cedana_checkpoint_cpu_seconds_total{kind="periodic",who="daemon"}`:
			m.daemonCPU = v
		case `cedana_checkpoint_cpu_seconds_total{kind="periodic",who="criu"}`:
			m.criuCPU = v
		default:
			m.dumpFailed = v
		}
	}
	return m
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// sleepCtx sleeps for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
