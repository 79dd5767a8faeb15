package store

import (
	"fmt"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// benchStore returns a store of impl holding jobs jobs with perJob
// checkpoints each, plus extra checkpoints for the first job, and 10 events
// per job. Loading bypasses the per-call transactions, so that setting up
// 10,000 checkpoints takes milliseconds rather than 10,000 fsyncs.
func benchStore(b *testing.B, impl string, jobs, perJob, extra int) (Store, *Job) {
	b.Helper()
	var s Store
	var load func(fn func(tx *bolt.Tx) error)
	for _, i := range impls {
		if i.name == impl {
			s = i.open(b)
		}
	}
	if bs, ok := s.(*boltStore); ok {
		load = func(fn func(tx *bolt.Tx) error) {
			if err := bs.db.Update(fn); err != nil {
				b.Fatal(err)
			}
		}
	}
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var first *Job
	for n := range jobs {
		j := &Job{Name: fmt.Sprintf("job-%d", n), State: "running", PID: 1000 + n,
			Cmd: []string{"python3", "train.py", "--epochs", "100"}, Dir: "/home/user/work",
			Policy: Policy{CheckpointEvery: 10 * time.Minute, Keep: 5}}
		if err := s.CreateJob(ctx, j); err != nil {
			b.Fatal(err)
		}
		if first == nil {
			first = j
		}
		count := perJob
		if n == 0 {
			count += extra
		}
		cps := make([]*Checkpoint, count)
		for i := range cps {
			cps[i] = &Checkpoint{ID: NewID("ckpt-"), JobID: j.ID, State: CheckpointComplete,
				Path: fmt.Sprintf("/var/lib/cedana/checkpoints/%s/%d.tar.zst", j.ID, i), Size: 1 << 30,
				CreatedAt: base.Add(time.Duration(i) * time.Minute), CompletedAt: base.Add(time.Duration(i) * time.Minute),
				DumpSeconds: 1.5}
		}
		if load != nil {
			load(func(tx *bolt.Tx) error {
				for _, c := range cps {
					if err := putCheckpoint(tx, c); err != nil {
						return err
					}
				}
				return nil
			})
		} else {
			for _, c := range cps {
				if err := s.PutCheckpoint(ctx, c); err != nil {
					b.Fatal(err)
				}
			}
		}
		for range 10 {
			if _, err := s.AddEvent(ctx, Event{JobID: j.ID, Type: "checkpointed", Message: "ok"}); err != nil {
				b.Fatal(err)
			}
		}
	}
	return s, first
}

// BenchmarkListJobs is `cedana ps`: 100 jobs and 10,000 checkpoints.
func BenchmarkListJobs(b *testing.B) {
	for _, impl := range []string{"bolt", "memory"} {
		b.Run(impl, func(b *testing.B) {
			s, _ := benchStore(b, impl, 100, 100, 0)
			for b.Loop() {
				jobs, err := s.ListJobs(ctx)
				if err != nil || len(jobs) != 100 {
					b.Fatal(len(jobs), err)
				}
			}
		})
	}
}

// BenchmarkListCheckpoints lists one job's 10,000 checkpoints in a
// catalogue of 19,900.
func BenchmarkListCheckpoints(b *testing.B) {
	for _, impl := range []string{"bolt", "memory"} {
		b.Run(impl, func(b *testing.B) {
			s, j := benchStore(b, impl, 100, 100, 9900)
			for b.Loop() {
				cps, err := s.ListCheckpoints(ctx, j.ID)
				if err != nil || len(cps) != 10000 {
					b.Fatal(len(cps), err)
				}
			}
		})
	}
}

// BenchmarkUpdateJob is one durable write (a state change), fsync included.
func BenchmarkUpdateJob(b *testing.B) {
	for _, impl := range []string{"bolt", "memory"} {
		b.Run(impl, func(b *testing.B) {
			s, j := benchStore(b, impl, 100, 100, 0)
			for b.Loop() {
				if _, err := s.UpdateJob(ctx, j.ID, func(j *Job) error { j.Restores++; return nil }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
