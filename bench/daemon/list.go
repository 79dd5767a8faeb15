package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	pb "github.com/cedana/cedana/api/cedana/v1"
	"github.com/cedana/cedana/internal/store"
)

// listLatency is part (b): ListJobs latency through the gRPC API with a
// large catalogue. The catalogue is written straight into the state store
// before the daemon starts; its jobs are "killed", so that the daemon
// leaves them alone.
func (b *bench) listLatency(ctx context.Context) ([]row, error) {
	stateDir := filepath.Join(b.o.work, "list-state")
	start := time.Now()
	if err := fillCatalogue(ctx, filepath.Join(stateDir, "cedana.db"), b.o.catJobs, b.o.catCkpts); err != nil {
		return nil, err
	}
	logf("part b: %d jobs and %d checkpoints written to the store in %s", b.o.catJobs, b.o.catCkpts, time.Since(start).Round(time.Millisecond))

	d, err := b.startDaemon(ctx, "list", stateDir, "", nil)
	if err != nil {
		return nil, err
	}
	listJobs := func() error {
		resp, err := d.client.ListJobs(ctx, &pb.ListJobsRequest{})
		if err == nil && len(resp.GetJobs()) != b.o.catJobs {
			err = fmt.Errorf("ListJobs returned %d jobs, want %d", len(resp.GetJobs()), b.o.catJobs)
		}
		return err
	}
	jobs, err := timeCalls(20, b.o.calls, listJobs)
	if err != nil {
		return nil, err
	}
	listCkpts := func() error {
		resp, err := d.client.ListCheckpoints(ctx, &pb.ListCheckpointsRequest{})
		if err == nil && len(resp.GetCheckpoints()) != b.o.catCkpts {
			err = fmt.Errorf("ListCheckpoints returned %d checkpoints, want %d", len(resp.GetCheckpoints()), b.o.catCkpts)
		}
		return err
	}
	ckpts, err := timeCalls(5, 50, listCkpts)
	if err != nil {
		return nil, err
	}
	ps, err := timeCalls(2, 20, func() error { _, err := d.cli(b.o.cedana, "ps"); return err })
	if err != nil {
		return nil, err
	}
	p99 := pct(jobs, 99)
	cat := fmt.Sprintf("%d jobs, %d checkpoints", b.o.catJobs, b.o.catCkpts)
	return []row{
		{part: "b", what: fmt.Sprintf("ListJobs p50 / p99 / max over %d calls (gRPC, unix socket; %s)", len(jobs), cat),
			value: fmt.Sprintf("%s / %s / %s", ms(pct(jobs, 50)), ms(p99), ms(jobs[len(jobs)-1])),
			bar:   "p99 < 50 ms", verdict: verdictOf(p99 < 50*time.Millisecond)},
		{part: "b", what: fmt.Sprintf("ListCheckpoints (all %d) p50 / p99 over %d calls", b.o.catCkpts, len(ckpts)),
			value: fmt.Sprintf("%s / %s", ms(pct(ckpts, 50)), ms(pct(ckpts, 99))), bar: "(info)", verdict: info},
		{part: "b", what: fmt.Sprintf("`cedana ps` end to end (new process each) p50 / max over %d", len(ps)),
			value: fmt.Sprintf("%s / %s", ms(pct(ps, 50)), ms(ps[len(ps)-1])), bar: "(info)", verdict: info},
	}, nil
}

// fillCatalogue creates jobs "killed" jobs with ckpts complete checkpoint
// records (fake paths) spread over them.
func fillCatalogue(ctx context.Context, path string, jobs, ckpts int) error {
	st, err := store.Open(path)
	if err != nil {
		return err
	}
	defer st.Close()
	base := time.Now().Add(-time.Duration(ckpts) * time.Minute).UTC()
	ids := make([]string, jobs)
	for i := range jobs {
		j := &store.Job{Name: fmt.Sprintf("cat-%03d", i), State: "killed", PID: 0,
			Cmd: []string{"python3", "train.py", "--epochs", "100"}, Dir: "/srv/work",
			Policy: store.Policy{CheckpointEvery: 10 * time.Minute, Keep: 0}, CreatedAt: base}
		if err := st.CreateJob(ctx, j); err != nil {
			return err
		}
		ids[i] = j.ID
	}
	for i := range ckpts {
		t := base.Add(time.Duration(i) * time.Minute)
		job := ids[i%jobs]
		c := &store.Checkpoint{JobID: job, State: store.CheckpointComplete, Size: 256 << 20,
			Path:      filepath.Join("/nonexistent/checkpoints", job, fmt.Sprintf("fake-%05d.zip", i)),
			CreatedAt: t, CompletedAt: t.Add(2 * time.Second), DumpSeconds: 2}
		if err := st.PutCheckpoint(ctx, c); err != nil {
			return err
		}
	}
	return nil
}

// timeCalls runs fn warm times untimed, then n times timed, and returns
// the durations sorted.
func timeCalls(warm, n int, fn func() error) ([]time.Duration, error) {
	for range warm {
		if err := fn(); err != nil {
			return nil, err
		}
	}
	ds := make([]time.Duration, 0, n)
	for range n {
		t := time.Now()
		if err := fn(); err != nil {
			return nil, err
		}
		ds = append(ds, time.Since(t))
	}
	slices.Sort(ds)
	return ds, nil
}

// pct returns the p-th percentile (nearest rank) of sorted ds.
func pct(ds []time.Duration, p int) time.Duration {
	k := (len(ds)*p + 99) / 100
	return ds[max(k-1, 0)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
