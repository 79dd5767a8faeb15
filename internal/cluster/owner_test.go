package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// cluster3 starts three nodes (see startNodes) with their lease and job views.
func cluster3(t *testing.T, period time.Duration) ([]*Leases, []*Jobs) {
	t.Helper()
	var ls []*Leases
	var js []*Jobs
	for _, n := range startNodes(t, 3, period) {
		l, err := n.Leases(context.Background(), period)
		if err != nil {
			t.Fatal(err)
		}
		j, err := n.Jobs(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		ls, js = append(ls, l), append(js, j)
	}
	return ls, js
}

// TestFailoverClaim: node 0 owns a job and dies (stops renewing). Nodes 1
// and 2 both try to claim it as soon as they can: exactly one succeeds,
// not before node 0's deadline; node 0, back, can neither renew nor commit
// a checkpoint, and the winner's commit is the latest.
func TestFailoverClaim(t *testing.T) {
	const period = 2 * time.Second
	ls, js := cluster3(t, period)
	ctx := context.Background()
	rec, err := js[0].Create(ctx, JobRecord{ID: "job-f", Name: "train", Failover: true})
	if err != nil {
		t.Fatal(err)
	}
	lease0, err := ls[0].Acquire(ctx, rec.ID, rec.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	if rec, err = js[0].CommitCheckpoint(ctx, rec, "ckpt/job-f/1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := ls[0].Renew(ctx, lease0); err != nil {
		t.Fatal(err)
	}
	deadline0 := lease0.Deadline()

	// Node 0 is gone. Nodes 1 and 2 read the record and race.
	type win struct {
		node int
		rec  JobRecord
		l    *Lease
		at   time.Time
	}
	var (
		mu   sync.Mutex
		wins []win
		wg   sync.WaitGroup
	)
	for i := 1; i <= 2; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for end := time.Now().Add(3 * period); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
				seen, err := js[i].Get(ctx, "job-f")
				if err != nil {
					t.Error(err)
					return
				}
				if seen.Owner != "n0" {
					return // someone else has it
				}
				r, l, err := js[i].Claim(ctx, ls[i], seen)
				if err == nil {
					mu.Lock()
					wins = append(wins, win{i, r, l, time.Now()})
					mu.Unlock()
					return
				}
				if !errors.Is(err, ErrLeaseHeld) && !errors.Is(err, ErrStaleEpoch) {
					t.Errorf("node %d: %v", i, err)
					return
				}
			}
		}(i)
	}
	wg.Wait()
	if len(wins) != 1 {
		t.Fatalf("%d nodes claimed the job, want exactly 1", len(wins))
	}
	w := wins[0]
	if w.at.Before(deadline0) {
		t.Fatalf("node %d claimed at %v, before the old owner's deadline %v", w.node, w.at, deadline0)
	}
	if w.rec.Epoch <= rec.Epoch || w.l.Epoch != w.rec.Epoch || w.rec.Latest != "ckpt/job-f/1" {
		t.Errorf("claimed record %+v (lease epoch %d), want a newer epoch than %d and the latest checkpoint kept", w.rec, w.l.Epoch, rec.Epoch)
	}

	// Node 0 comes back with its stale view.
	if err := ls[0].Renew(ctx, lease0); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("old owner's renewal: %v, want ErrLeaseLost", err)
	}
	if _, err := js[0].CommitCheckpoint(ctx, rec, "ckpt/job-f/stale", time.Now()); !errors.Is(err, ErrStaleEpoch) {
		t.Errorf("old owner's commit: %v, want ErrStaleEpoch", err)
	}
	if _, err := js[w.node].CommitCheckpoint(ctx, w.rec, "ckpt/job-f/2", time.Now()); err != nil {
		t.Errorf("new owner's commit: %v", err)
	}
	got, err := js[0].Get(ctx, "job-f")
	if err != nil || got.Latest != "ckpt/job-f/2" || got.Owner != fmt.Sprintf("n%d", w.node) {
		t.Errorf("record %+v (%v), want latest ckpt/job-f/2 owned by n%d", got, err, w.node)
	}
}

// TestHandOver: a migration's commit point moves ownership; the source's
// later writes are refused, the target can take the released lease.
func TestHandOver(t *testing.T) {
	ls, js := cluster3(t, 5*time.Second)
	ctx := context.Background()
	rec, err := js[0].Create(ctx, JobRecord{ID: "job-m", Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	l0, err := ls[0].Acquire(ctx, rec.ID, rec.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js[0].Create(ctx, JobRecord{ID: "job-m"}); !errors.Is(err, ErrJobExists) {
		t.Errorf("second create: %v, want ErrJobExists", err)
	}
	moved, err := js[0].Hand(ctx, rec, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if err := ls[0].Release(ctx, l0); err != nil {
		t.Fatal(err)
	}
	l1, err := ls[1].Acquire(ctx, moved.ID, moved.Epoch)
	if err != nil {
		t.Fatalf("target takes the lease: %v", err)
	}
	if l1.Epoch != moved.Epoch {
		t.Errorf("lease epoch %d, want %d", l1.Epoch, moved.Epoch)
	}
	if _, err := js[0].Hand(ctx, rec, "n2"); !errors.Is(err, ErrStaleEpoch) {
		t.Errorf("source hands the job again from its old epoch: %v, want ErrStaleEpoch", err)
	}
	if _, err := js[0].CommitCheckpoint(ctx, moved, "x", time.Now()); !errors.Is(err, ErrStaleEpoch) {
		t.Errorf("source commits after the hand-over: %v, want ErrStaleEpoch", err)
	}
}
