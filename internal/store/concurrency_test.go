package store

import (
	"errors"
	"fmt"
	"sync"
	"testing"
)

// TestConcurrent races writers and readers on one store: read-modify-write
// updates must not lose increments, Seq must stay unique, and only one of
// several creators of the same name may win.
func TestConcurrent(t *testing.T) {
	const workers, rounds = 6, 20
	forEachImpl(t, func(t *testing.T, s Store) {
		shared := mustJob(t, s, "shared")
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			winners  int
			seqs     = map[uint64]bool{}
			failures []error
		)
		fail := func(err error) {
			mu.Lock()
			failures = append(failures, err)
			mu.Unlock()
		}
		for w := range workers {
			wg.Add(2)
			go func() { // writer
				defer wg.Done()
				err := s.CreateJob(ctx, &Job{Name: "contested"})
				switch {
				case err == nil:
					mu.Lock()
					winners++
					mu.Unlock()
				case !errors.Is(err, ErrExists):
					fail(err)
				}
				own := &Job{Name: fmt.Sprintf("worker-%d", w)}
				if err := s.CreateJob(ctx, own); err != nil {
					fail(err)
					return
				}
				for r := range rounds {
					if _, err := s.UpdateJob(ctx, shared.ID, func(j *Job) error { j.Restores++; return nil }); err != nil {
						fail(err)
					}
					e, err := s.AddEvent(ctx, Event{JobID: shared.ID, Type: "tick"})
					if err != nil {
						fail(err)
					}
					mu.Lock()
					if seqs[e.Seq] {
						failures = append(failures, fmt.Errorf("seq %d issued twice", e.Seq))
					}
					seqs[e.Seq] = true
					mu.Unlock()
					if err := s.PutCheckpoint(ctx, &Checkpoint{JobID: own.ID}); err != nil {
						fail(err)
					}
					if _, err := s.UpdateJob(ctx, own.ID, func(j *Job) error {
						j.Name = fmt.Sprintf("worker-%d-%d", w, r)
						return nil
					}); err != nil {
						fail(err)
					}
				}
			}()
			go func() { // reader
				defer wg.Done()
				for range rounds {
					jobs, err := s.ListJobs(ctx)
					if err != nil {
						fail(err)
						continue
					}
					for _, j := range jobs {
						if _, err := s.GetJob(ctx, j.Name); err != nil && !errors.Is(err, ErrNotFound) {
							fail(err) // not found is fine: renamed since the list
						}
					}
					if _, err := s.ListCheckpoints(ctx, ""); err != nil {
						fail(err)
					}
					if _, err := s.ListEvents(ctx, shared.ID, 0, 10); err != nil {
						fail(err)
					}
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(failures...); err != nil {
			t.Fatal(err)
		}
		if winners != 1 {
			t.Errorf("%d creators of the same name succeeded, want 1", winners)
		}
		got, err := s.GetJob(ctx, "shared")
		if err != nil || got.Restores != workers*rounds {
			t.Fatalf("shared job = %+v, %v; want %d restores", got, err, workers*rounds)
		}
		if ev, _ := s.ListEvents(ctx, shared.ID, 0, 0); len(ev) != workers*rounds || ev[len(ev)-1].Seq != workers*rounds {
			t.Fatalf("%d events, want %d numbered 1..%[2]d", len(ev), workers*rounds)
		}
		if cps, _ := s.ListCheckpoints(ctx, ""); len(cps) != workers*rounds {
			t.Fatalf("%d checkpoints, want %d", len(cps), workers*rounds)
		}
		if jobs, _ := s.ListJobs(ctx); len(jobs) != workers+2 {
			t.Fatalf("%d jobs, want %d", len(jobs), workers+2)
		}
		if bs, ok := s.(*boltStore); ok {
			if err := bs.checkConsistency(); err != nil {
				t.Fatal(err)
			}
		}
	})
}
