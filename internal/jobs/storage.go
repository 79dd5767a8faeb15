package jobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/chunks"
	"github.com/cedana/cedana/internal/storage"
	"github.com/cedana/cedana/internal/store"
)

// Where job archives live. With Config.Storage set (storage.backend other
// than local), process jobs' archives go to that backend under
// "jobs/<job ID>/<name>_<time>.zip" and each checkpoint record's Path is
// the object's storage.Location (a file path for dir, s3://bucket/… for
// s3, nats://host/bucket/… for jetstream). Records whose Path is not in
// the backend (written before it was configured, container jobs) are
// local files, handled as before.
//
// With Config.Dedup, process jobs' checkpoints are stored deduplicated
// (internal/chunks): in the configured backend, or, without one, in a dir
// backend over CheckpointDir ("<job ID>/<name>_<time>.zip", the same paths
// as before). Either way m.ckStore is the backend every checkpoint goes
// through; it reads plain archives too.

// storageTimeout bounds one metadata call (stat, delete) to the backend.
const storageTimeout = 30 * time.Second

// checkpointStore returns the backend job checkpoints go through (nil:
// plain local files) for cfg.
func checkpointStore(cfg Config) (storage.Backend, error) {
	b := cfg.Storage
	if !cfg.Dedup {
		return b, nil
	}
	if b == nil {
		if err := os.MkdirAll(cfg.CheckpointDir, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", cfg.CheckpointDir, err)
		}
		dir, err := storage.NewDir(storage.KindLocal, cfg.CheckpointDir)
		if err != nil {
			return nil, err
		}
		b = dir
	}
	return chunks.New(b), nil
}

// jobKeyPrefix is the prefix of a job's objects in the backend.
func (m *Manager) jobKeyPrefix(jobID string) string {
	if m.cfg.Storage == nil { // the dir backend over CheckpointDir
		return jobID + "/"
	}
	return "jobs/" + jobID + "/"
}

// inStore returns the key of the archive at loc in the checkpoint
// backend, or false when loc is a local file.
func (m *Manager) inStore(loc string) (string, bool) {
	if m.ckStore == nil || loc == "" {
		return "", false
	}
	return storage.KeyOf(m.ckStore, loc)
}

// newArchiveLocation picks the location of a job's next archive: a new
// key in the backend for process jobs when one is configured, else a new
// local path.
func (m *Manager) newArchiveLocation(ctx context.Context, j *store.Job) (string, error) {
	if m.ckStore == nil || j.Runtime != "" {
		return m.newArchivePath(j)
	}
	ctx, cancel := context.WithTimeout(ctx, storageTimeout)
	defer cancel()
	now := time.Now()
	for n := 0; n < 1000; n++ {
		key := m.jobKeyPrefix(j.ID) + checkpoint.ArchiveName(j.Name, now, n)
		_, err := m.ckStore.Stat(ctx, key)
		switch {
		case errors.Is(err, storage.ErrNotExist):
			return storage.Location(m.ckStore, key), nil
		case err != nil:
			return "", err
		}
	}
	return "", fmt.Errorf("no free archive name in %s", m.ckStore.Name())
}

// dumpRequest is the engine request writing a process job's archive to loc.
func (m *Manager) dumpRequest(loc string) checkpoint.DumpRequest {
	if key, ok := m.inStore(loc); ok {
		return checkpoint.DumpRequest{Storage: m.ckStore, Key: key}
	}
	return checkpoint.DumpRequest{Path: loc}
}

// restoreRequest is the engine request reading the archive at loc.
func (m *Manager) restoreRequest(loc string) checkpoint.RestoreRequest {
	if key, ok := m.inStore(loc); ok {
		return checkpoint.RestoreRequest{Path: loc, Storage: m.ckStore, Key: key}
	}
	return checkpoint.RestoreRequest{Path: loc}
}

// removeArchive deletes the archive at loc: the object in the backend, or
// the local file. A missing archive is not an error.
func (m *Manager) removeArchive(loc string) error {
	if key, ok := m.inStore(loc); ok {
		ctx, cancel := context.WithTimeout(context.Background(), storageTimeout)
		defer cancel()
		err := m.ckStore.Delete(ctx, key)
		if ce := (*chunks.CollectError)(nil); errors.As(err, &ce) {
			m.log.Warn("checkpoint deleted; its unused chunks stay until the next deletion", "err", ce)
			return nil
		}
		return err
	}
	return removeArchive(loc)
}

// archiveExists reports whether the archive at loc exists.
func (m *Manager) archiveExists(loc string) bool {
	if key, ok := m.inStore(loc); ok {
		ctx, cancel := context.WithTimeout(context.Background(), storageTimeout)
		defer cancel()
		_, err := m.ckStore.Stat(ctx, key)
		return err == nil
	}
	_, err := os.Stat(loc)
	return err == nil
}

// completeArchive reports whether loc holds a whole archive, and its size.
// An object in a backend is complete once it is visible (the backends
// publish only complete objects); its manifest is read back all the same.
func (m *Manager) completeArchive(loc string) (int64, bool) {
	if _, ok := m.inStore(loc); !ok {
		return completeArchive(loc)
	}
	mf, size, err := m.readManifest(loc)
	return size, err == nil && mf != nil
}

// readManifest reads the manifest of the archive at loc.
func (m *Manager) readManifest(loc string) (*archive.Manifest, int64, error) {
	key, ok := m.inStore(loc)
	if !ok {
		r, err := archive.Open(loc, archive.DefaultLimits())
		if err != nil {
			return nil, 0, err
		}
		defer r.Close()
		return r.Manifest, r.Size, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), storageTimeout)
	defer cancel()
	obj, err := m.ckStore.Open(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	var src io.ReaderAt = storage.NewReadCache(obj)
	r, err := archive.OpenReaderAt(loc, src, obj.Size(), archive.DefaultLimits())
	if err != nil {
		obj.Close()
		return nil, 0, err
	}
	defer r.Close()
	return r.Manifest, r.Size, nil
}

// dropChunks deletes the chunks of a removed job's deduplicated
// checkpoints that no remaining checkpoint of the job names, young ones
// too (nobody writes the job any more), and the empty directories they
// leave in the checkpoint directory.
func (m *Manager) dropChunks(ctx context.Context, jobID string) error {
	d, ok := m.ckStore.(*chunks.Dedup)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, storageTimeout)
	defer cancel()
	if _, err := d.Collect(ctx, m.jobKeyPrefix(jobID)+"x", time.Now().Add(d.Grace+time.Hour)); err != nil {
		return fmt.Errorf("delete the chunks of job %s: %w", jobID, err)
	}
	if m.cfg.Storage == nil {
		removeEmptyDirs(filepath.Join(m.jobDir(jobID), "chunks"))
	}
	return nil
}

// removeEmptyDirs removes dir and the directories under it that hold no
// file.
func removeEmptyDirs(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.IsDir() {
			removeEmptyDirs(filepath.Join(dir, e.Name()))
		}
	}
	_ = os.Remove(dir) // fails unless empty
}
