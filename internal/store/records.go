package store

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// This file holds the rules that both implementations share, so that the
// in-memory fake cannot drift from the bolt store: defaults and validation,
// ordering, and the encodings that both use for every record (JSON for jobs
// and events, codec.go for checkpoints).

// now is the store's clock: UTC without a monotonic reading, so that a time
// written back into the caller's record equals the one read back later.
func now() time.Time { return time.Now().UTC().Round(0) }

// prepareJob validates a new job and fills in its defaults.
func prepareJob(j *Job, t time.Time) error {
	if j == nil {
		return fmt.Errorf("create job: nil job: %w", ErrInvalid)
	}
	if j.ID == "" {
		j.ID = NewID("job-")
	}
	if j.Name == "" {
		return fmt.Errorf("create job %s: name is required: %w", j.ID, ErrInvalid)
	}
	if j.CreatedAt.IsZero() {
		j.CreatedAt = t
	}
	if j.UpdatedAt.IsZero() {
		j.UpdatedAt = t
	}
	return nil
}

// applyJobUpdate runs fn on j, a fresh copy of the stored job, and
// validates the result. The caller remembers the old name beforehand.
func applyJobUpdate(j *Job, fn func(*Job) error, t time.Time) error {
	id := j.ID
	if err := fn(j); err != nil {
		return err
	}
	if j.ID != id {
		return fmt.Errorf("update job %s: ID cannot change (to %q): %w", id, j.ID, ErrInvalid)
	}
	if j.Name == "" {
		return fmt.Errorf("update job %s: name is required: %w", id, ErrInvalid)
	}
	j.UpdatedAt = t
	return nil
}

// prepareCheckpoint validates a checkpoint record and fills in its defaults.
func prepareCheckpoint(c *Checkpoint, t time.Time) error {
	if c == nil {
		return fmt.Errorf("put checkpoint: nil checkpoint: %w", ErrInvalid)
	}
	if c.ID == "" {
		c.ID = NewID("ckpt-")
	}
	if c.JobID == "" {
		return fmt.Errorf("put checkpoint %s: job ID is required: %w", c.ID, ErrInvalid)
	}
	if c.CreatedAt.IsZero() {
		c.CreatedAt = t
	}
	return nil
}

// prepareEvent validates an event and fills in its time; Seq is the
// caller's to assign.
func prepareEvent(e *Event, t time.Time) error {
	if e.JobID == "" {
		return fmt.Errorf("add event: job ID is required: %w", ErrInvalid)
	}
	if e.Time.IsZero() {
		e.Time = t
	}
	return nil
}

// nameTaken reports the error for a job name or ID that is already in use.
func nameTaken(name, ownerID string) error {
	if name == ownerID {
		return fmt.Errorf("job %q: %w", name, ErrExists)
	}
	return fmt.Errorf("job name %q is taken by job %s: %w", name, ownerID, ErrExists)
}

func jobNotFound(idOrName string) error {
	return fmt.Errorf("job %q: %w", idOrName, ErrNotFound)
}

func checkpointNotFound(id string) error {
	return fmt.Errorf("checkpoint %q: %w", id, ErrNotFound)
}

// sortJobs orders jobs by CreatedAt, then ID.
func sortJobs(jobs []*Job) {
	slices.SortFunc(jobs, func(a, b *Job) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
}

// sortCheckpoints orders checkpoints newest first: by CreatedAt, then ID,
// both descending.
func sortCheckpoints(cps []*Checkpoint) {
	slices.SortFunc(cps, func(a, b *Checkpoint) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return cmp.Compare(b.ID, a.ID)
	})
}

func encode(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", v, err)
	}
	return b, nil
}

func decodeJob(b []byte) (*Job, error) {
	j := new(Job)
	if err := json.Unmarshal(b, j); err != nil {
		return nil, fmt.Errorf("decode job: %w", err)
	}
	return j, nil
}

func decodeEvent(b []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	return e, nil
}

// prepareChange validates a Change for jobID and fills in what Commit
// assigns (checkpoint IDs and times, event job and time), before any write.
func prepareChange(jobID string, c Change, t time.Time) error {
	for _, ck := range c.Put {
		if ck.JobID == "" {
			ck.JobID = jobID
		}
		if ck.JobID != jobID {
			return fmt.Errorf("commit: checkpoint %s belongs to job %s, not %s: %w", ck.ID, ck.JobID, jobID, ErrInvalid)
		}
		if err := prepareCheckpoint(ck, t); err != nil {
			return err
		}
	}
	for i := range c.Events {
		c.Events[i].JobID = jobID
		if err := prepareEvent(&c.Events[i], t); err != nil {
			return err
		}
	}
	return nil
}
