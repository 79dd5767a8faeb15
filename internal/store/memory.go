package store

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

// memStore is the in-memory Store. It keeps records encoded, exactly as the
// bolt store does, so that reads return fresh copies and round-trip times
// the same way.
type memStore struct {
	mu       sync.RWMutex
	closed   bool
	jobs     map[string][]byte            // job ID → Job
	names    map[string]string            // job name → job ID
	jobCkpts map[string]map[string][]byte // job ID → checkpoint ID → Checkpoint
	ckptJob  map[string]string            // checkpoint ID → job ID
	events   map[string][][]byte          // job ID → events; [i] has Seq i+1
}

var _ Store = (*memStore)(nil)

// NewMemory returns an empty in-memory Store with the same semantics as the
// bolt store. It is safe for concurrent use.
func NewMemory() Store {
	return &memStore{
		jobs:     map[string][]byte{},
		names:    map[string]string{},
		jobCkpts: map[string]map[string][]byte{},
		ckptJob:  map[string]string{},
		events:   map[string][][]byte{},
	}
}

// lock and rlock take the mutex after checking ctx and that the store is
// open; on success the caller must unlock.
func (s *memStore) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	return nil
}

func (s *memStore) rlock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	return nil
}

// Close implements Store.
func (s *memStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

// checkNameFree returns ErrExists if name is another job's name or ID.
func (s *memStore) checkNameFree(name, id string) error {
	if owner, ok := s.names[name]; ok && owner != id {
		return nameTaken(name, owner)
	}
	if _, ok := s.jobs[name]; ok && name != id {
		return nameTaken(name, name)
	}
	return nil
}

func (s *memStore) putJob(j *Job) error {
	b, err := encode(j)
	if err != nil {
		return err
	}
	s.jobs[j.ID] = b
	s.names[j.Name] = j.ID
	return nil
}

// CreateJob implements Store.
func (s *memStore) CreateJob(ctx context.Context, j *Job) error {
	if err := prepareJob(j, now()); err != nil {
		return err
	}
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if _, ok := s.jobs[j.ID]; ok {
		return nameTaken(j.ID, j.ID)
	}
	if owner, ok := s.names[j.ID]; ok {
		return nameTaken(j.ID, owner)
	}
	if err := s.checkNameFree(j.Name, j.ID); err != nil {
		return err
	}
	return s.putJob(j)
}

// UpdateJob implements Store: a Commit that only updates the job.
func (s *memStore) UpdateJob(ctx context.Context, id string, fn func(*Job) error) (*Job, error) {
	return s.Commit(ctx, id, Change{Job: fn})
}

// GetJob implements Store.
func (s *memStore) GetJob(ctx context.Context, idOrName string) (*Job, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	b, ok := s.jobs[idOrName]
	if !ok {
		b, ok = s.jobs[s.names[idOrName]]
	}
	if !ok {
		return nil, jobNotFound(idOrName)
	}
	return decodeJob(b)
}

// ListJobs implements Store.
func (s *memStore) ListJobs(ctx context.Context) ([]*Job, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	out := make([]*Job, 0, len(s.jobs))
	for id, b := range s.jobs {
		j, err := decodeJob(b)
		if err != nil {
			return nil, fmt.Errorf("job %q: %w", id, err)
		}
		out = append(out, j)
	}
	sortJobs(out)
	return out, nil
}

// DeleteJob implements Store.
func (s *memStore) DeleteJob(ctx context.Context, id string) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	b, ok := s.jobs[id]
	if !ok {
		return jobNotFound(id)
	}
	j, err := decodeJob(b)
	if err != nil {
		return err
	}
	delete(s.jobs, id)
	delete(s.names, j.Name)
	for cid := range s.jobCkpts[id] {
		delete(s.ckptJob, cid)
	}
	delete(s.jobCkpts, id)
	delete(s.events, id)
	return nil
}

// PutCheckpoint implements Store.
func (s *memStore) PutCheckpoint(ctx context.Context, c *Checkpoint) error {
	if err := prepareCheckpoint(c, now()); err != nil {
		return err
	}
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if _, ok := s.jobs[c.JobID]; !ok {
		return fmt.Errorf("put checkpoint %s: %w", c.ID, jobNotFound(c.JobID))
	}
	if prev, ok := s.ckptJob[c.ID]; ok && prev != c.JobID {
		delete(s.jobCkpts[prev], c.ID)
	}
	if s.jobCkpts[c.JobID] == nil {
		s.jobCkpts[c.JobID] = map[string][]byte{}
	}
	s.jobCkpts[c.JobID][c.ID] = encodeCheckpoint(c)
	s.ckptJob[c.ID] = c.JobID
	return nil
}

// GetCheckpoint implements Store.
func (s *memStore) GetCheckpoint(ctx context.Context, id string) (*Checkpoint, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	jobID, ok := s.ckptJob[id]
	if !ok {
		return nil, checkpointNotFound(id)
	}
	return decodeCheckpoint(s.jobCkpts[jobID][id])
}

// ListCheckpoints implements Store.
func (s *memStore) ListCheckpoints(ctx context.Context, jobID string) ([]*Checkpoint, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	var vals []Checkpoint
	scan := func(records map[string][]byte) error {
		vals = slices.Grow(vals, len(records))
		for id, b := range records {
			vals = append(vals, Checkpoint{})
			if err := decodeCheckpointInto(&vals[len(vals)-1], b); err != nil {
				return fmt.Errorf("checkpoint %q: %w", id, err)
			}
		}
		return nil
	}
	if jobID == "" {
		for _, records := range s.jobCkpts {
			if err := scan(records); err != nil {
				return nil, err
			}
		}
	} else {
		if _, ok := s.jobs[jobID]; !ok {
			return nil, jobNotFound(jobID)
		}
		if err := scan(s.jobCkpts[jobID]); err != nil {
			return nil, err
		}
	}
	out := make([]*Checkpoint, len(vals))
	for i := range vals {
		out[i] = &vals[i]
	}
	sortCheckpoints(out)
	return out, nil
}

// DeleteCheckpoint implements Store.
func (s *memStore) DeleteCheckpoint(ctx context.Context, id string) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	jobID, ok := s.ckptJob[id]
	if !ok {
		return checkpointNotFound(id)
	}
	delete(s.jobCkpts[jobID], id)
	delete(s.ckptJob, id)
	return nil
}

// AddEvent implements Store.
func (s *memStore) AddEvent(ctx context.Context, e Event) (Event, error) {
	if err := prepareEvent(&e, now()); err != nil {
		return Event{}, err
	}
	if err := s.lock(ctx); err != nil {
		return Event{}, err
	}
	defer s.mu.Unlock()
	if _, ok := s.jobs[e.JobID]; !ok {
		return Event{}, fmt.Errorf("add event: %w", jobNotFound(e.JobID))
	}
	e.Seq = uint64(len(s.events[e.JobID])) + 1
	b, err := encode(e)
	if err != nil {
		return Event{}, err
	}
	s.events[e.JobID] = append(s.events[e.JobID], b)
	return e, nil
}

// ListEvents implements Store.
func (s *memStore) ListEvents(ctx context.Context, jobID string, afterSeq uint64, limit int) ([]Event, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	if _, ok := s.jobs[jobID]; !ok {
		return nil, jobNotFound(jobID)
	}
	log := s.events[jobID]
	out := []Event{}
	if afterSeq >= uint64(len(log)) {
		return out, nil
	}
	for _, b := range log[afterSeq:] {
		if limit > 0 && len(out) >= limit {
			break
		}
		e, err := decodeEvent(b)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// Commit implements Store. Everything that can fail is done before the
// first change, so a failed Commit changes nothing.
func (s *memStore) Commit(ctx context.Context, jobID string, c Change) (*Job, error) {
	t := now()
	if err := prepareChange(jobID, c, t); err != nil {
		return nil, err
	}
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	b, ok := s.jobs[jobID]
	if !ok {
		return nil, jobNotFound(jobID)
	}
	j, err := decodeJob(b)
	if err != nil {
		return nil, err
	}
	oldName := j.Name
	if c.Job != nil {
		if err := applyJobUpdate(j, c.Job, t); err != nil {
			return nil, err
		}
		if j.Name != oldName {
			if err := s.checkNameFree(j.Name, j.ID); err != nil {
				return nil, err
			}
		}
	}
	events := make([][]byte, len(c.Events))
	next := uint64(len(s.events[jobID]))
	for i := range c.Events {
		next++
		c.Events[i].Seq = next
		if events[i], err = encode(c.Events[i]); err != nil {
			return nil, err
		}
	}
	// From here on nothing fails.
	if c.Job != nil {
		if j.Name != oldName {
			delete(s.names, oldName)
		}
		if err := s.putJob(j); err != nil {
			return nil, err
		}
	}
	for _, ck := range c.Put {
		if prev, ok := s.ckptJob[ck.ID]; ok && prev != jobID {
			delete(s.jobCkpts[prev], ck.ID)
		}
		if s.jobCkpts[jobID] == nil {
			s.jobCkpts[jobID] = map[string][]byte{}
		}
		s.jobCkpts[jobID][ck.ID] = encodeCheckpoint(ck)
		s.ckptJob[ck.ID] = jobID
	}
	for _, id := range c.Delete {
		if owner, ok := s.ckptJob[id]; ok {
			delete(s.jobCkpts[owner], id)
			delete(s.ckptJob, id)
		}
	}
	s.events[jobID] = append(s.events[jobID], events...)
	return decodeJob(s.jobs[jobID])
}
