package store

import (
	"fmt"
	"path/filepath"
	"testing"
)

// TestCommitWritesOnlyWhatChanged: a commit that changes a job's state
// and rewrites one of its checkpoint records does not rewrite the name
// index nor the checkpoint index, whose entries did not change. A bbolt
// Put dirties its page even with the same value, and each dirty page is
// one more write (and more to fsync) in every periodic checkpoint's two
// commits. The comparison is with changes that must touch those indexes:
// a rename, a new checkpoint.
func TestCommitWritesOnlyWhatChanged(t *testing.T) {
	s := openBolt(t, filepath.Join(t.TempDir(), "cedana.db"))
	// Enough jobs that no bucket fits inline in its parent's page.
	var jobs []*Job
	for n := range 100 {
		jobs = append(jobs, mustJob(t, s, fmt.Sprintf("job-%03d", n)))
		if err := s.PutCheckpoint(ctx, &Checkpoint{JobID: jobs[n].ID, State: CheckpointComplete}); err != nil {
			t.Fatal(err)
		}
	}
	j := jobs[50]
	ck := &Checkpoint{JobID: j.ID, State: CheckpointPending, Path: "/x/a.zip"}
	if err := s.PutCheckpoint(ctx, ck); err != nil {
		t.Fatal(err)
	}
	writes := func(c Change) int64 {
		t.Helper()
		before := s.db.Stats()
		if _, err := s.Commit(ctx, j.ID, c); err != nil {
			t.Fatal(err)
		}
		after := s.db.Stats()
		d := after.Sub(&before)
		return d.TxStats.GetWrite()
	}
	setState := func(st string) func(*Job) error { return func(j *Job) error { j.State = st; return nil } }

	stateOnly := writes(Change{Job: setState("dumping")})
	rename := writes(Change{Job: func(j *Job) error { j.Name = "renamed"; return nil }})
	if stateOnly >= rename {
		t.Errorf("a state change wrote %d pages, a rename %d: the state change rewrote the name index", stateOnly, rename)
	}

	ck.State = CheckpointComplete
	same := writes(Change{Job: setState("running"), Put: []*Checkpoint{ck}})
	fresh := writes(Change{Job: setState("dumping"), Put: []*Checkpoint{{JobID: j.ID, State: CheckpointPending}}})
	if same >= fresh {
		t.Errorf("rewriting a checkpoint record wrote %d pages, adding one %d: the rewrite touched the checkpoint index", same, fresh)
	}
	if err := s.checkConsistency(); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetJob(ctx, "renamed"); err != nil || got.ID != j.ID {
		t.Fatalf("GetJob(renamed) = %v, %v", got, err)
	}
	if got, err := s.GetCheckpoint(ctx, ck.ID); err != nil || got.State != CheckpointComplete {
		t.Fatalf("GetCheckpoint = %+v, %v", got, err)
	}
}
