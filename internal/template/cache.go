package template

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"

	"github.com/cedana/cedana/internal/archive"
)

// Cache keeps, per template, its images unpacked and verified once, in a
// directory next to the archive that every clone's restore reads (CRIU
// only reads the images directory; each restore has a work directory of
// its own). Restores of the same template in a row so skip opening,
// verifying and unpacking the archive: the cache entry is named after the
// archive's identity (device, inode, size, modification time), so a
// replaced archive is never served from an old entry.
type Cache struct {
	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

// NewCache returns an empty cache.
func NewCache() *Cache { return &Cache{locks: map[string]*sync.Mutex{}} }

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

// Images returns the directory of t's verified images, unpacking the
// archive on first use (hit reports whether it was already there), and
// the archive's manifest.
func (c *Cache) Images(t *Template) (dir string, m *archive.Manifest, hit bool, err error) {
	var st syscall.Stat_t
	if err := syscall.Stat(t.Archive, &st); err != nil {
		return "", nil, false, fmt.Errorf("template %s: its archive is gone: %w", t.Name, err)
	}
	key := fmt.Sprintf(".cache-%x-%x-%x-%x", st.Dev, st.Ino, st.Size, st.Mtim.Nano())
	entry := filepath.Join(filepath.Dir(t.Archive), key)
	l := c.lock(entry)
	l.Lock()
	defer l.Unlock()
	mpath := filepath.Join(entry, "manifest.json")
	if b, err := os.ReadFile(mpath); err == nil {
		if m, err := archive.ParseManifest(b); err == nil {
			return filepath.Join(entry, "images"), m, true, nil
		}
	}
	_ = os.RemoveAll(entry)
	r, err := archive.Open(t.Archive, archive.DefaultLimits())
	if err != nil {
		return "", nil, false, fmt.Errorf("template %s: %w", t.Name, err)
	}
	defer r.Close()
	tmp := entry + ".tmp"
	_ = os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", nil, false, err
	}
	if err := r.Extract(tmp, archive.ExtractOptions{Concurrency: runtime.NumCPU()}); err != nil {
		_ = os.RemoveAll(tmp)
		return "", nil, false, fmt.Errorf("template %s: %w", t.Name, err)
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
		return "", nil, false, fmt.Errorf("template %s: cache its images: %w", t.Name, err)
	}
	return filepath.Join(entry, "images"), r.Manifest, false, nil
}
