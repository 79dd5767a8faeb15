package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
)

// TestCommit: a job update, checkpoint puts and deletes and events land
// together; an aborted update writes nothing at all. Both implementations.
func TestCommit(t *testing.T) {
	for name, open := range map[string]func(t *testing.T) Store{
		"bolt": func(t *testing.T) Store {
			s, err := Open(filepath.Join(t.TempDir(), "s.db"))
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		"memory": func(*testing.T) Store { return NewMemory() },
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s := open(t)
			defer s.Close()
			j := &Job{Name: "j", State: "running"}
			if err := s.CreateJob(ctx, j); err != nil {
				t.Fatal(err)
			}
			old := &Checkpoint{JobID: j.ID, State: CheckpointComplete, Path: "/old"}
			if err := s.PutCheckpoint(ctx, old); err != nil {
				t.Fatal(err)
			}
			ck := &Checkpoint{State: CheckpointComplete, Path: "/new"}
			got, err := s.Commit(ctx, j.ID, Change{
				Job:    func(j *Job) error { j.State = "checkpointed"; return nil },
				Put:    []*Checkpoint{ck},
				Delete: []string{old.ID, "ckpt-missing"},
				Events: []Event{{Type: "checkpointed", Message: "m"}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if got.State != "checkpointed" || ck.ID == "" || ck.JobID != j.ID {
				t.Fatalf("job %+v, checkpoint %+v", got, ck)
			}
			cs, _ := s.ListCheckpoints(ctx, j.ID)
			if len(cs) != 1 || cs[0].ID != ck.ID {
				t.Fatalf("checkpoints after commit: %+v", cs)
			}
			es, _ := s.ListEvents(ctx, j.ID, 0, 0)
			if len(es) != 1 || es[0].Seq != 1 || es[0].Type != "checkpointed" {
				t.Fatalf("events after commit: %+v", es)
			}

			abort := errors.New("no")
			_, err = s.Commit(ctx, j.ID, Change{
				Job:    func(*Job) error { return abort },
				Put:    []*Checkpoint{{State: CheckpointPending}},
				Delete: []string{ck.ID},
				Events: []Event{{Type: "x", Message: "y"}},
			})
			if !errors.Is(err, abort) {
				t.Fatalf("aborted commit: %v", err)
			}
			j2, _ := s.GetJob(ctx, j.ID)
			cs, _ = s.ListCheckpoints(ctx, j.ID)
			es, _ = s.ListEvents(ctx, j.ID, 0, 0)
			if j2.State != "checkpointed" || len(cs) != 1 || cs[0].ID != ck.ID || len(es) != 1 {
				t.Fatalf("an aborted commit changed something: job %s, %d checkpoints, %d events", j2.State, len(cs), len(es))
			}
			if _, err := s.Commit(ctx, "job-nope", Change{}); !errors.Is(err, ErrNotFound) {
				t.Errorf("commit to an unknown job: %v", err)
			}
		})
	}
}
