package store

import (
	"context"
	"errors"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Checkpoint records live in job_checkpoints/<job ID>, so that listing a
// job's checkpoints is one sequential scan; checkpoint_jobs maps each
// checkpoint ID to its job for lookups by ID. See schema.go.

// PutCheckpoint implements Store.
func (s *boltStore) PutCheckpoint(ctx context.Context, c *Checkpoint) error {
	if err := prepareCheckpoint(c, now()); err != nil {
		return err
	}
	return s.update(ctx, func(tx *bolt.Tx) error { return putCheckpoint(tx, c) })
}

// putCheckpoint creates or replaces c, moving it if its job changed.
func putCheckpoint(tx *bolt.Tx, c *Checkpoint) error {
	if tx.Bucket(bucketJobs).Get([]byte(c.JobID)) == nil {
		return fmt.Errorf("put checkpoint %s: %w", c.ID, jobNotFound(c.JobID))
	}
	owners := tx.Bucket(bucketCheckpointJobs)
	prev := owners.Get([]byte(c.ID))
	if prev != nil && string(prev) != c.JobID {
		if jb := tx.Bucket(bucketJobCheckpoints).Bucket(prev); jb != nil {
			if err := jb.Delete([]byte(c.ID)); err != nil {
				return err
			}
		}
	}
	jb, err := tx.Bucket(bucketJobCheckpoints).CreateBucketIfNotExists([]byte(c.JobID))
	if err != nil {
		return err
	}
	if err := jb.Put([]byte(c.ID), encodeCheckpoint(c)); err != nil {
		return err
	}
	if prev != nil && string(prev) == c.JobID {
		return nil // the index entry is right already (see putJob)
	}
	return owners.Put([]byte(c.ID), []byte(c.JobID))
}

// checkpointRecord returns the encoded checkpoint id and the bucket that
// holds it, or ErrNotFound.
func checkpointRecord(tx *bolt.Tx, id string) ([]byte, *bolt.Bucket, error) {
	jobID := tx.Bucket(bucketCheckpointJobs).Get([]byte(id))
	if jobID == nil {
		return nil, nil, checkpointNotFound(id)
	}
	jb := tx.Bucket(bucketJobCheckpoints).Bucket(jobID)
	if jb == nil {
		return nil, nil, fmt.Errorf("checkpoint %s: job %s has no checkpoints: %w", id, jobID, errCorrupt)
	}
	v := jb.Get([]byte(id))
	if v == nil {
		return nil, nil, fmt.Errorf("checkpoint %s: missing from job %s: %w", id, jobID, errCorrupt)
	}
	return v, jb, nil
}

// deleteJobCheckpoints removes every checkpoint of job jobID.
func deleteJobCheckpoints(tx *bolt.Tx, jobID string) error {
	jb := tx.Bucket(bucketJobCheckpoints).Bucket([]byte(jobID))
	if jb == nil {
		return nil
	}
	owners := tx.Bucket(bucketCheckpointJobs)
	if err := jb.ForEach(func(k, _ []byte) error { return owners.Delete(k) }); err != nil {
		return err
	}
	err := tx.Bucket(bucketJobCheckpoints).DeleteBucket([]byte(jobID))
	if errors.Is(err, berrors.ErrBucketNotFound) {
		return nil
	}
	return err
}

// GetCheckpoint implements Store.
func (s *boltStore) GetCheckpoint(ctx context.Context, id string) (*Checkpoint, error) {
	var out *Checkpoint
	err := s.view(ctx, func(tx *bolt.Tx) error {
		v, _, err := checkpointRecord(tx, id)
		if err != nil {
			return err
		}
		out, err = decodeCheckpoint(v)
		return err
	})
	return out, err
}

// ListCheckpoints implements Store.
func (s *boltStore) ListCheckpoints(ctx context.Context, jobID string) ([]*Checkpoint, error) {
	var vals []Checkpoint
	err := s.view(ctx, func(tx *bolt.Tx) error {
		all := tx.Bucket(bucketJobCheckpoints)
		scan := func(jb *bolt.Bucket) error {
			vals = slices.Grow(vals, jb.Stats().KeyN) // a page walk, cheaper than regrowing
			return jb.ForEach(func(k, v []byte) error {
				vals = append(vals, Checkpoint{})
				if err := decodeCheckpointInto(&vals[len(vals)-1], v); err != nil {
					return fmt.Errorf("checkpoint %q: %w", k, err)
				}
				return nil
			})
		}
		if jobID == "" {
			return all.ForEachBucket(func(k []byte) error { return scan(all.Bucket(k)) })
		}
		if tx.Bucket(bucketJobs).Get([]byte(jobID)) == nil {
			return jobNotFound(jobID)
		}
		if jb := all.Bucket([]byte(jobID)); jb != nil {
			return scan(jb)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]*Checkpoint, len(vals))
	for i := range vals {
		out[i] = &vals[i]
	}
	sortCheckpoints(out)
	return out, nil
}

// DeleteCheckpoint implements Store.
func (s *boltStore) DeleteCheckpoint(ctx context.Context, id string) error {
	return s.update(ctx, func(tx *bolt.Tx) error { return deleteCheckpoint(tx, id) })
}

// deleteCheckpoint is DeleteCheckpoint inside a transaction.
func deleteCheckpoint(tx *bolt.Tx, id string) error {
	_, jb, err := checkpointRecord(tx, id)
	if err != nil {
		return err
	}
	if err := jb.Delete([]byte(id)); err != nil {
		return err
	}
	return tx.Bucket(bucketCheckpointJobs).Delete([]byte(id))
}
