package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/chunks"
	"github.com/cedana/cedana/internal/storage"
)

// Archives in a storage backend (internal/storage): a dump with
// DumpRequest.Storage streams its archive into the store, which publishes it
// only once complete; a restore or inspect with a Storage reads the object
// through ranged reads, so it starts before the whole archive has arrived.
// The archive package sees a Destination and an io.ReaderAt, nothing more.

// archiveTarget is where a dump's archive goes: a file path, or a key in a
// backend (then loc is its storage.Location).
type archiveTarget struct {
	loc     string
	backend storage.Backend
	key     string
	// dst receives the backend's writer once created, for its statistics.
	dst *storage.Writer
	// stream, if set, receives the archive instead (loc is its name):
	// DumpRequest.Destination.
	stream archive.Destination
}

// stored returns what a deduplicating backend stored for the archive, nil
// for another one.
func (t archiveTarget) stored() *chunks.Stats {
	if t.dst == nil {
		return nil
	}
	if w, ok := (*t.dst).(interface{ Stats() chunks.Stats }); ok {
		st := w.Stats()
		return &st
	}
	return nil
}

// remote reports whether the archive goes to a backend or a stream.
func (t archiveTarget) remote() bool { return t.backend != nil || t.stream != nil }

// stagingFallback is where images are staged when /dev/shm has no room:
// next to a local archive, else the system's temporary directory.
func (t archiveTarget) stagingFallback() string {
	if t.remote() {
		return os.TempDir()
	}
	return filepath.Dir(t.loc)
}

// dumpTarget picks a dump's archive: req.Path or a new name in req.Dir, or,
// with req.Storage, req.Key or a new key under req.KeyPrefix.
func dumpTarget(ctx context.Context, req DumpRequest, name string, t time.Time) (archiveTarget, error) {
	if req.Destination != nil {
		return archiveTarget{loc: req.DestinationName, stream: req.Destination}, nil
	}
	if req.Storage == nil {
		p, err := ArchivePath(req.Dir, req.Path, name, t)
		return archiveTarget{loc: p}, err
	}
	key := req.Key
	if key == "" {
		for n := 0; n < 1000; n++ {
			k := req.KeyPrefix + ArchiveName(name, t, n)
			if _, err := req.Storage.Stat(ctx, k); errors.Is(err, storage.ErrNotExist) {
				key = k
				break
			} else if err != nil {
				return archiveTarget{}, err
			}
		}
		if key == "" {
			return archiveTarget{}, fmt.Errorf("no free archive name in %s", req.Storage.Name())
		}
	}
	if err := storage.CheckKey(key); err != nil {
		return archiveTarget{}, fmt.Errorf("%w: %w", ErrInvalidInput, err)
	}
	return archiveTarget{loc: storage.Location(req.Storage, key), backend: req.Storage, key: key, dst: new(storage.Writer)}, nil
}

// newWriter starts a streamed archive at t.
func (t archiveTarget) newWriter(ctx context.Context, opts archive.WriteOptions) (*archive.Writer, error) {
	if !t.remote() {
		return archive.NewWriter(t.loc, opts)
	}
	if t.stream != nil {
		return archive.NewWriterTo(t.loc, t.stream, opts)
	}
	dst, err := t.backend.Create(ctx, t.key)
	if err != nil {
		return nil, err
	}
	*t.dst = dst
	return archive.NewWriterTo(t.loc, dst, opts)
}

// create writes a whole archive from staged images at t.
func (t archiveTarget) create(ctx context.Context, m *archive.Manifest, imagesDir string, files []archive.FileSource, opts archive.WriteOptions) (*archive.Manifest, int64, error) {
	if !t.remote() {
		return archive.Create(t.loc, m, imagesDir, files, opts)
	}
	if t.stream != nil {
		return archive.CreateTo(t.loc, t.stream, m, imagesDir, files, opts)
	}
	dst, err := t.backend.Create(ctx, t.key)
	if err != nil {
		return nil, 0, err
	}
	*t.dst = dst
	return archive.CreateTo(t.loc, dst, m, imagesDir, files, opts)
}

// openArchive opens the archive a restore or inspect names: path, or key in
// backend. It returns the reader and a local directory for staging when
// /dev/shm has no room.
func (s *Service) openArchive(ctx context.Context, backend storage.Backend, key, path string) (*archive.Reader, string, error) {
	if backend == nil {
		r, err := archive.Open(path, archive.DefaultLimits())
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", path, err)
		}
		return r, filepath.Dir(path), nil
	}
	loc := storage.Location(backend, key)
	obj, err := backend.Open(ctx, key)
	if err != nil {
		return nil, "", err
	}
	// A local file is read directly (mmap, splice); anything else through
	// a bounded block cache that reads ahead.
	cache := storage.NewReadCache(obj)
	cache.OnClose = func(fetched int64) {
		s.log.Info("archive read from storage", "archive", loc, "size", obj.Size(), "fetched", fetched)
	}
	var src io.ReaderAt = cache
	if f, ok := obj.(interface{ File() *os.File }); ok {
		src = f.File() // closing it closes obj
	} else if d, ok := obj.(interface{ DirectReads() bool }); ok && d.DirectReads() {
		src = obj // a deduplicated checkpoint on local disk keeps its own chunk cache
	}
	r, err := archive.OpenReaderAt(loc, src, obj.Size(), archive.DefaultLimits())
	if err != nil {
		obj.Close()
		return nil, "", fmt.Errorf("%s: %w", loc, err)
	}
	return r, os.TempDir(), nil
}
