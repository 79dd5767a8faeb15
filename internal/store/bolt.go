package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// DefaultLockTimeout is how long Open waits for another process to release
// the store file before it returns ErrLocked.
const DefaultLockTimeout = time.Second

// Options tune OpenWithOptions. The zero value is Open's behaviour.
type Options struct {
	// LockTimeout is how long to wait for the file lock; 0 means
	// DefaultLockTimeout.
	LockTimeout time.Duration
}

// boltStore is the Store backed by a bbolt file; see schema.go.
type boltStore struct {
	db *bolt.DB
}

var _ Store = (*boltStore)(nil)

// Open opens the bolt store at path, creating the file (mode 0600) and its
// directory (0700) when missing, and migrates it to SchemaVersion. It
// returns a *LockedError (ErrLocked) if another process has the file open,
// and a *SchemaError (ErrSchemaTooNew) if a newer cedana wrote it.
func Open(path string) (Store, error) {
	return OpenWithOptions(path, Options{})
}

// OpenWithOptions is Open with options.
func OpenWithOptions(path string, opts Options) (Store, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open state store: %w", err)
	}
	// NoFreelistSync and the hashmap freelist (as etcd runs bbolt): a commit
	// does not write the freelist; after a crash it is rebuilt on open.
	// Records stay durable: every commit still fsyncs its data.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout,
		NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, &LockedError{Path: path, PID: lockHolder(path)}
	}
	if err != nil {
		return nil, fmt.Errorf("open state store %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return migrate(tx, path) }); err != nil {
		_ = db.Close()
		var se *SchemaError
		if errors.As(err, &se) {
			return nil, err
		}
		return nil, fmt.Errorf("open state store %s: %w", path, err)
	}
	return &boltStore{db: db}, nil
}

// Close implements Store.
func (s *boltStore) Close() error { return s.db.Close() }

// view and update run fn in a read or write transaction, after checking
// ctx, and translate bbolt's "not open" into ErrClosed.
func (s *boltStore) view(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return closedErr(s.db.View(fn))
}

func (s *boltStore) update(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return closedErr(s.db.Update(fn))
}

func closedErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// CreateJob implements Store.
func (s *boltStore) CreateJob(ctx context.Context, j *Job) error {
	if err := prepareJob(j, now()); err != nil {
		return err
	}
	return s.update(ctx, func(tx *bolt.Tx) error {
		jobs, names := tx.Bucket(bucketJobs), tx.Bucket(bucketJobNames)
		if jobs.Get([]byte(j.ID)) != nil {
			return nameTaken(j.ID, j.ID)
		}
		if owner := names.Get([]byte(j.ID)); owner != nil {
			return nameTaken(j.ID, string(owner))
		}
		if err := checkNameFree(tx, j.Name, j.ID); err != nil {
			return err
		}
		return putJob(tx, j, true)
	})
}

// checkNameFree returns ErrExists if name is another job's name or ID.
func checkNameFree(tx *bolt.Tx, name, id string) error {
	if owner := tx.Bucket(bucketJobNames).Get([]byte(name)); owner != nil && string(owner) != id {
		return nameTaken(name, string(owner))
	}
	if name != id && tx.Bucket(bucketJobs).Get([]byte(name)) != nil {
		return nameTaken(name, name)
	}
	return nil
}

// putJob writes j and, when newName is set (a new job, or a renamed
// one), its entry in the name index. An unchanged index entry is not
// written again: a bbolt Put dirties its page even when the value is the
// same, and every dirty page is one more write in the commit.
func putJob(tx *bolt.Tx, j *Job, newName bool) error {
	b, err := encode(j)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketJobs).Put([]byte(j.ID), b); err != nil {
		return err
	}
	if !newName {
		return nil
	}
	return tx.Bucket(bucketJobNames).Put([]byte(j.Name), []byte(j.ID))
}

func getJob(tx *bolt.Tx, id string) (*Job, error) {
	b := tx.Bucket(bucketJobs).Get([]byte(id))
	if b == nil {
		return nil, jobNotFound(id)
	}
	return decodeJob(b)
}

// UpdateJob implements Store.
func (s *boltStore) UpdateJob(ctx context.Context, id string, fn func(*Job) error) (*Job, error) {
	var out *Job
	err := s.update(ctx, func(tx *bolt.Tx) error {
		var err error
		out, err = updateJob(tx, id, fn)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// updateJob is UpdateJob inside a transaction.
func updateJob(tx *bolt.Tx, id string, fn func(*Job) error) (*Job, error) {
	j, err := getJob(tx, id)
	if err != nil {
		return nil, err
	}
	oldName := j.Name
	if err := applyJobUpdate(j, fn, now()); err != nil {
		return nil, err
	}
	if j.Name != oldName {
		if err := checkNameFree(tx, j.Name, j.ID); err != nil {
			return nil, err
		}
		if err := tx.Bucket(bucketJobNames).Delete([]byte(oldName)); err != nil {
			return nil, err
		}
	}
	if err := putJob(tx, j, j.Name != oldName); err != nil {
		return nil, err
	}
	return getJob(tx, id) // a copy that fn cannot still be holding
}

// Commit implements Store.
func (s *boltStore) Commit(ctx context.Context, jobID string, c Change) (*Job, error) {
	t := now()
	if err := prepareChange(jobID, c, t); err != nil {
		return nil, err
	}
	var out *Job
	err := s.update(ctx, func(tx *bolt.Tx) error {
		var err error
		if c.Job != nil {
			if out, err = updateJob(tx, jobID, c.Job); err != nil {
				return err
			}
		} else if out, err = getJob(tx, jobID); err != nil {
			return err
		}
		for _, ck := range c.Put {
			if err := putCheckpoint(tx, ck); err != nil {
				return err
			}
		}
		for _, id := range c.Delete {
			if err := deleteCheckpoint(tx, id); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
		}
		for i := range c.Events {
			if err := addEvent(tx, &c.Events[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// GetJob implements Store.
func (s *boltStore) GetJob(ctx context.Context, idOrName string) (*Job, error) {
	var out *Job
	err := s.view(ctx, func(tx *bolt.Tx) error {
		jobs := tx.Bucket(bucketJobs)
		b := jobs.Get([]byte(idOrName))
		if b == nil {
			if id := tx.Bucket(bucketJobNames).Get([]byte(idOrName)); id != nil {
				b = jobs.Get(id)
			}
		}
		if b == nil {
			return jobNotFound(idOrName)
		}
		var err error
		out, err = decodeJob(b)
		return err
	})
	return out, err
}

// ListJobs implements Store.
func (s *boltStore) ListJobs(ctx context.Context) ([]*Job, error) {
	out := []*Job{}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).ForEach(func(k, v []byte) error {
			j, err := decodeJob(v)
			if err != nil {
				return fmt.Errorf("job %q: %w", k, err)
			}
			out = append(out, j)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	sortJobs(out)
	return out, nil
}

// DeleteJob implements Store.
func (s *boltStore) DeleteJob(ctx context.Context, id string) error {
	return s.update(ctx, func(tx *bolt.Tx) error {
		j, err := getJob(tx, id)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketJobs).Delete([]byte(id)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketJobNames).Delete([]byte(j.Name)); err != nil {
			return err
		}
		if err := deleteJobCheckpoints(tx, id); err != nil {
			return err
		}
		if err := tx.Bucket(bucketEvents).DeleteBucket([]byte(id)); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
			return err
		}
		return nil
	})
}

// AddEvent implements Store.
func (s *boltStore) AddEvent(ctx context.Context, e Event) (Event, error) {
	if err := prepareEvent(&e, now()); err != nil {
		return Event{}, err
	}
	err := s.update(ctx, func(tx *bolt.Tx) error { return addEvent(tx, &e) })
	if err != nil {
		return Event{}, err
	}
	return e, nil
}

// addEvent is AddEvent inside a transaction; it assigns e.Seq.
func addEvent(tx *bolt.Tx, e *Event) error {
	if tx.Bucket(bucketJobs).Get([]byte(e.JobID)) == nil {
		return fmt.Errorf("add event: %w", jobNotFound(e.JobID))
	}
	eb, err := tx.Bucket(bucketEvents).CreateBucketIfNotExists([]byte(e.JobID))
	if err != nil {
		return err
	}
	if e.Seq, err = eb.NextSequence(); err != nil {
		return err
	}
	b, err := encode(*e)
	if err != nil {
		return err
	}
	return eb.Put(seqKey(e.Seq), b)
}

// ListEvents implements Store.
func (s *boltStore) ListEvents(ctx context.Context, jobID string, afterSeq uint64, limit int) ([]Event, error) {
	out := []Event{}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketJobs).Get([]byte(jobID)) == nil {
			return jobNotFound(jobID)
		}
		eb := tx.Bucket(bucketEvents).Bucket([]byte(jobID))
		if eb == nil || afterSeq == math.MaxUint64 {
			return nil
		}
		c := eb.Cursor()
		for k, v := c.Seek(seqKey(afterSeq + 1)); k != nil; k, v = c.Next() {
			if limit > 0 && len(out) >= limit {
				break
			}
			e, err := decodeEvent(v)
			if err != nil {
				return fmt.Errorf("event %d of job %s: %w", binary.BigEndian.Uint64(k), jobID, err)
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// seqKey is an event's key: Seq, 8 bytes big-endian, so keys sort by Seq.
func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq)
}
