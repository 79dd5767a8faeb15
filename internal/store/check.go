package store

import (
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// checkConsistency verifies the invariants listed in schema.go and bbolt's
// own page structure, returning every violation found. Tests run it after
// crashes; it reads the whole store, so the daemon should not call it on a
// hot path.
func (s *boltStore) checkConsistency() error {
	return s.db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, fmt.Errorf("bbolt: %w", err))
		}
		bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

		if v, err := readSchemaVersion(tx); err != nil || v != SchemaVersion {
			bad("schema version %d (%v), want %d", v, err, SchemaVersion)
		}
		jobs, names := tx.Bucket(bucketJobs), tx.Bucket(bucketJobNames)
		idx, owners, events := tx.Bucket(bucketJobCheckpoints), tx.Bucket(bucketCheckpointJobs), tx.Bucket(bucketEvents)

		nJobs := 0
		_ = jobs.ForEach(func(k, v []byte) error {
			nJobs++
			j, err := decodeJob(v)
			switch {
			case err != nil:
				bad("job %q: %v", k, err)
			case j.ID != string(k):
				bad("job %q has ID %q", k, j.ID)
			case j.Name == "":
				bad("job %q has no name", k)
			case string(names.Get([]byte(j.Name))) != j.ID:
				bad("job %q: name %q maps to %q", k, j.Name, names.Get([]byte(j.Name)))
			}
			return nil
		})
		if n := names.Stats().KeyN; n != nJobs {
			bad("%d names for %d jobs", n, nJobs)
		}
		_ = names.ForEach(func(k, v []byte) error {
			if jobs.Get(v) == nil {
				bad("name %q maps to missing job %q", k, v)
			}
			if string(k) != string(v) && jobs.Get(k) != nil {
				bad("name %q of job %q is another job's ID", k, v)
			}
			return nil
		})
		_ = owners.ForEach(func(k, v []byte) error {
			if jobs.Get(v) == nil {
				bad("checkpoint %q belongs to missing job %q", k, v)
			}
			if jb := idx.Bucket(v); jb == nil || jb.Get(k) == nil {
				bad("checkpoint %q missing from job %q", k, v)
			}
			return nil
		})
		_ = idx.ForEachBucket(func(jobID []byte) error {
			if jobs.Get(jobID) == nil {
				bad("checkpoints for missing job %q", jobID)
			}
			return idx.Bucket(jobID).ForEach(func(k, v []byte) error {
				c, err := decodeCheckpoint(v)
				switch {
				case err != nil:
					bad("checkpoint %q of job %q: %v", k, jobID, err)
				case c.ID != string(k) || c.JobID != string(jobID):
					bad("checkpoint %q of job %q is %q of job %q", k, jobID, c.ID, c.JobID)
				case string(owners.Get(k)) != string(jobID):
					bad("checkpoint %q of job %q is indexed under job %q", k, jobID, owners.Get(k))
				}
				return nil
			})
		})
		_ = events.ForEachBucket(func(jobID []byte) error {
			if jobs.Get(jobID) == nil {
				bad("events for missing job %q", jobID)
			}
			eb := events.Bucket(jobID)
			return eb.ForEach(func(k, v []byte) error {
				e, err := decodeEvent(v)
				switch {
				case err != nil:
					bad("event %x of job %q: %v", k, jobID, err)
				case len(k) != 8 || binary.BigEndian.Uint64(k) != e.Seq || e.JobID != string(jobID):
					bad("event %x of job %q is seq %d of job %q", k, jobID, e.Seq, e.JobID)
				case e.Seq > eb.Sequence():
					bad("event %d of job %q is past the bucket sequence %d", e.Seq, jobID, eb.Sequence())
				}
				return nil
			})
		})
		return errors.Join(errs...)
	})
}
