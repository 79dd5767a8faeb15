package template

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/storage"
)

// Cache keeps, per template, its images unpacked and verified once, in a
// node-local directory that every clone's restore reads (CRIU only reads
// the images directory; each restore has a work directory of its own).
// Restores of the same template in a row so skip opening, verifying and
// unpacking the archive.
//
// A local template's entry lies next to its archive and is named after
// the archive's identity (device, inode, size, modification time), so a
// replaced archive is never served from an old entry. A shared
// template's entry lies in the store's local directory (.cache/DIGEST)
// and is named after its content digest: it is filled straight from the
// object in the backend (ranged reads into memory, never a copy of the
// archive on disk), and a template removed and made again with other
// content gets another entry. Entries in use (Images' release not yet
// called) are never pruned.
type Cache struct {
	mu    sync.Mutex
	locks map[string]*sync.Mutex
	users map[string]int // entries in use, by path
}

// NewCache returns an empty cache.
func NewCache() *Cache { return &Cache{locks: map[string]*sync.Mutex{}, users: map[string]int{}} }

// lock serialises the unpacking of one entry (5 clones at once unpack once).
func (c *Cache) lock(key string) *sync.Mutex {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.locks[key]
	if l == nil {
		l = &sync.Mutex{}
		c.locks[key] = l
	}
	return l
}

// hold marks entry as in use until the returned function is called.
func (c *Cache) hold(entry string) func() {
	c.mu.Lock()
	c.users[entry]++
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			if c.users[entry]--; c.users[entry] <= 0 {
				delete(c.users, entry)
			}
			c.mu.Unlock()
		})
	}
}

// Hold marks the entry whose images directory is dir as in use (a clone
// whose lazy-pages server still reads from it) until release is called.
func (c *Cache) Hold(dir string) (release func()) { return c.hold(filepath.Dir(dir)) }

// entry is the directory of t's cache entry.
func (c *Cache) entry(s *Store, t *Template) (string, error) {
	if s.Shared() {
		if len(t.Digest) < 32 || strings.ContainsAny(t.Digest, "/.") {
			return "", fmt.Errorf("template %s: no content digest recorded: %w", t.Name, archive.ErrCorrupt)
		}
		return filepath.Join(s.root, ".cache", t.Digest), nil
	}
	var st syscall.Stat_t
	if err := syscall.Stat(t.Archive, &st); err != nil {
		return "", fmt.Errorf("template %s: its archive is gone: %w", t.Name, err)
	}
	key := fmt.Sprintf(".cache-%x-%x-%x-%x", st.Dev, st.Ino, st.Size, st.Mtim.Nano())
	return filepath.Join(filepath.Dir(t.Archive), key), nil
}

// Images returns the directory of t's verified images, unpacking the
// archive on first use (hit reports whether it was already there), and
// the archive's manifest. The entry stays in use (never pruned) until
// release is called. Nothing is returned unless every entry of the
// archive was read and verified.
func (c *Cache) Images(ctx context.Context, s *Store, t *Template) (dir string, m *archive.Manifest, hit bool, release func(), err error) {
	entry, err := c.entry(s, t)
	if err != nil {
		return "", nil, false, nil, err
	}
	l := c.lock(entry)
	l.Lock()
	defer l.Unlock()
	mpath := filepath.Join(entry, "manifest.json")
	if b, err := os.ReadFile(mpath); err == nil {
		if m, err := archive.ParseManifest(b); err == nil && (t.Digest == "" || ContentDigest(m) == t.Digest) {
			return filepath.Join(entry, "images"), m, true, c.hold(entry), nil
		}
	}
	_ = os.RemoveAll(entry)
	r, err := s.OpenArchive(ctx, t)
	if err != nil {
		return "", nil, false, nil, s.removedMeanwhile(ctx, t, err)
	}
	defer r.Close()
	tmp := entry + ".tmp"
	_ = os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", nil, false, nil, err
	}
	if err := r.Extract(tmp, archive.ExtractOptions{Concurrency: runtime.NumCPU()}); err != nil {
		_ = os.RemoveAll(tmp)
		return "", nil, false, nil, s.removedMeanwhile(ctx, t, fmt.Errorf("template %s (%s): %w", t.Name, t.Location, err))
	}
	// The manifest is written last: its presence marks a complete entry.
	b, err := json.Marshal(r.Manifest)
	if err == nil {
		err = os.WriteFile(filepath.Join(tmp, "manifest.json"), b, 0o600)
	}
	if err == nil {
		err = os.Rename(tmp, entry)
	}
	if err != nil {
		_ = os.RemoveAll(tmp)
		return "", nil, false, nil, fmt.Errorf("template %s: cache its images: %w", t.Name, err)
	}
	return filepath.Join(entry, "images"), r.Manifest, false, c.hold(entry), nil
}

// Prune removes the shared-template entries of s's local cache whose
// digest keep does not list (templates removed, possibly by another
// node), except those in use or being filled.
func (c *Cache) Prune(s *Store, keep map[string]bool) {
	if !s.Shared() {
		return // a local template's entry goes with its directory
	}
	dir := filepath.Join(s.root, ".cache")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		digest := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(e.Name(), ".tmp"), ".zip"), ".tmp")
		if keep[digest] {
			continue
		}
		entry := filepath.Join(dir, digest)
		l := c.lock(entry)
		if !l.TryLock() {
			continue // being filled
		}
		c.mu.Lock()
		busy := c.users[entry] > 0
		c.mu.Unlock()
		if !busy {
			for _, p := range []string{entry, entry + ".tmp", entry + ".zip", entry + ".zip.tmp"} {
				_ = os.RemoveAll(p)
			}
		}
		l.Unlock()
	}
}

// ArchiveFile returns a local file of t's archive, for engines that read
// only files (the container engine): a local template's own archive, or
// for a shared template a copy fetched once into the node's cache
// (.cache/DIGEST.zip) and reused; its manifest must match t.Digest. The
// file stays (is never pruned) until release is called.
func (c *Cache) ArchiveFile(ctx context.Context, s *Store, t *Template) (path string, hit bool, release func(), err error) {
	if !s.Shared() {
		return t.Archive, true, func() {}, nil
	}
	entry, err := c.entry(s, t)
	if err != nil {
		return "", false, nil, err
	}
	file := entry + ".zip"
	l := c.lock(entry)
	l.Lock()
	defer l.Unlock()
	if st, err := os.Stat(file); err == nil && st.Size() == t.Size {
		return file, true, c.hold(entry), nil
	}
	r, err := s.OpenArchive(ctx, t) // checks the manifest against t.Digest
	if err != nil {
		return "", false, nil, s.removedMeanwhile(ctx, t, err)
	}
	r.Close()
	obj, err := s.backend.Open(ctx, t.Key)
	if err != nil {
		return "", false, nil, s.wrap(t.Name, "open its archive", err)
	}
	defer obj.Close()
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return "", false, nil, err
	}
	tmp := file + ".tmp"
	err = copyObject(obj, tmp)
	if err == nil {
		var m *archive.Manifest
		if m, err = manifestOf(tmp); err == nil && ContentDigest(m) != t.Digest {
			err = fmt.Errorf("template %s: the archive at %s changed while it was fetched: %w", t.Name, t.Location, archive.ErrCorrupt)
		}
	}
	if err == nil {
		err = os.Rename(tmp, file)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return "", false, nil, s.removedMeanwhile(ctx, t, fmt.Errorf("template %s: fetch its archive: %w", t.Name, err))
	}
	return file, false, c.hold(entry), nil
}

// copyObject writes obj into a new file at path.
func copyObject(obj storage.Object, path string) error {
	rd, err := obj.Stream(0, -1)
	if err != nil {
		return err
	}
	defer rd.Close()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, rd)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// manifestOf reads the manifest of a local archive.
func manifestOf(path string) (*archive.Manifest, error) {
	r, err := archive.Open(path, archive.DefaultLimits())
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return r.Manifest, nil
}

// removedMeanwhile explains a failure to read a shared template's archive
// when the template was removed (by any node) while it was read: the read
// then fails in ways that say little (a timeout, a damaged entry).
func (s *Store) removedMeanwhile(ctx context.Context, t *Template, err error) error {
	if !s.Shared() || errors.Is(err, ErrNotFound) {
		return err
	}
	cur, gerr := s.Get(ctx, t.Name)
	switch {
	case errors.Is(gerr, ErrNotFound):
		return fmt.Errorf("%w: %s was removed from %s while this node fetched its images; nothing was started (the read failed: %v)", ErrNotFound, t.Name, s.backend.Name(), err)
	case gerr == nil && cur.ID != t.ID:
		return fmt.Errorf("%w: %s was removed and made again in %s while this node fetched its images; nothing was started, try again (the read failed: %v)", ErrBusy, t.Name, s.backend.Name(), err)
	}
	return err
}
