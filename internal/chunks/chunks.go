// Package chunks stores checkpoint archives deduplicated: the large zstd
// frames of an archive (the memory pages, 4 MiB of content each) become
// content-addressed chunks that successive checkpoints of one job share,
// and the rest of the archive stays in the checkpoint's own object. It is
// a storage.Backend wrapped around another one, so that dump, restore,
// inspect, retention and export use it without knowing (issue 15; design
// and limits in docs/periodic.md, "Storing only what changed").
//
// Writing: the archive writer announces each large frame before writing
// it (archive.FrameDestination). A frame is stored under its SHA-256 as
// <dir>/chunks/sha256/<2 hex>/<64 hex>, where <dir> is the directory of
// the checkpoint's key (a job's checkpoints share one), only when missing.
// Every other byte, the "skeleton", streams into the checkpoint's object,
// which ends with a manifest listing where each chunk sits in the archive
// and a trailer. The object is committed last, after every chunk: a
// checkpoint exists when its object does, and an interrupted write leaves
// only unreferenced chunks, which a later collection removes.
//
// Reading: Open returns the archive byte for byte, assembled from the
// skeleton and the chunks, each chunk checked against its SHA-256 before a
// byte of it is returned; objects without the trailer (archives written
// before, or by client dump) are returned as they are.
//
// Retention: the objects are the only reference counts. Delete removes
// the checkpoint's object, then collects its directory: the chunks no
// remaining object names, older than a grace period, are deleted. Writes
// and collections of one directory are serialized in this process, so a
// chunk found present by a write is never collected under it.
package chunks

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cedana/cedana/internal/storage"
)

// Layout of a deduplicated checkpoint object:
//
//	skeleton bytes | manifest (JSON) | manifest length (8 bytes LE) | magic (8 bytes)
const (
	trailerMagic = "CEDCHNK1"
	trailerLen   = 16
	// chunkDir is the element under a checkpoint's directory that holds
	// its chunks.
	chunkDir = "chunks"
	// ManifestVersion is the version of the Manifest schema.
	ManifestVersion = 1
	// MinChunk is the smallest frame stored as a chunk; smaller frames
	// (small images) stay in the skeleton.
	MinChunk = 64 << 10
	// maxChunk bounds a chunk (a frame of 4 MiB of content, stored raw,
	// plus block headers), so that a hostile manifest cannot make a
	// reader allocate more.
	maxChunk = 8 << 20
	// maxSkeleton bounds the skeleton a reader holds in memory.
	maxSkeleton = 512 << 20
	// maxManifest bounds the manifest a reader parses.
	maxManifest = 64 << 20
	// DefaultGrace is how old an unreferenced chunk must be to be
	// collected: younger ones may belong to a checkpoint being written by
	// another process (a node that lost a job it was checkpointing).
	DefaultGrace = 10 * time.Minute
)

// Ref names a chunk: its SHA-256 (hex) and length.
type Ref struct {
	Digest string `json:"sha256"`
	Size   int64  `json:"size"`
}

// valid reports whether the digest is 64 lowercase hex digits and the
// size is within bounds.
func (r Ref) valid() bool {
	if len(r.Digest) != 64 || r.Size <= 0 || r.Size > maxChunk {
		return false
	}
	_, err := hex.DecodeString(r.Digest)
	return err == nil && strings.ToLower(r.Digest) == r.Digest
}

// Segment is a chunk and where it sits in the archive. XXH3 (XXH3-128,
// 32 hex digits) is what a read checks each chunk against: SHA-256 names
// the chunk, the archive's own SHA-256 digests of its entries (which
// cover every chunk's bytes) guard what is restored, and the fast check
// finds a bad chunk by name before the archive reader does.
type Segment struct {
	Off  int64  `json:"off"`
	XXH3 string `json:"xxh3"`
	Ref
}

// Manifest describes a deduplicated checkpoint.
type Manifest struct {
	Version int `json:"version"`
	// Size is the length of the archive.
	Size int64 `json:"size"`
	// Skeleton is the number of bytes of the archive stored in the
	// checkpoint's object, and SkeletonSHA256 their digest.
	Skeleton       int64  `json:"skeleton"`
	SkeletonSHA256 string `json:"skeleton_sha256"`
	// Chunks are in archive order and do not overlap.
	Chunks []Segment `json:"chunks"`
}

// validate checks a manifest read from storage (untrusted) or about to be
// written.
func (m *Manifest) validate() error {
	if m.Version != ManifestVersion {
		return fmt.Errorf("manifest version %d, want %d", m.Version, ManifestVersion)
	}
	if m.Size < 0 || m.Skeleton < 0 || m.Skeleton > m.Size || m.Skeleton > maxSkeleton {
		return fmt.Errorf("bad sizes: archive %d, skeleton %d", m.Size, m.Skeleton)
	}
	if !(Ref{Digest: m.SkeletonSHA256, Size: 1}).valid() {
		return fmt.Errorf("bad skeleton digest %q", m.SkeletonSHA256)
	}
	var end, total int64
	for i, c := range m.Chunks {
		if !c.valid() {
			return fmt.Errorf("bad chunk reference %+v", c.Ref)
		}
		if b, err := hex.DecodeString(c.XXH3); err != nil || len(b) != 16 || strings.ToLower(c.XXH3) != c.XXH3 {
			return fmt.Errorf("bad XXH3 %q of chunk %d", c.XXH3, i)
		}
		if c.Off < end || c.Off > m.Size-c.Size {
			return fmt.Errorf("chunk %d at %d+%d overlaps another or lies outside the archive", i, c.Off, c.Size)
		}
		end = c.Off + c.Size
		total += c.Size
	}
	if total+m.Skeleton != m.Size {
		return fmt.Errorf("chunks hold %d bytes and the skeleton %d, the archive is %d", total, m.Skeleton, m.Size)
	}
	return nil
}

// parseManifest decodes and validates a manifest.
func parseManifest(data []byte) (*Manifest, error) {
	m := new(Manifest)
	if err := json.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("manifest: %v", err)
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// Dedup is a storage.Backend that stores archives deduplicated in Inner.
type Dedup struct {
	inner storage.Backend
	// Grace is how old an unreferenced chunk must be to be collected.
	Grace time.Duration
	// Workers is how many chunks are hashed and stored at once per write.
	Workers int

	mu   sync.Mutex
	dirs map[string]*dirState
}

// dirState serializes the writes and collections of one directory and
// remembers the chunks known to be stored there.
type dirState struct {
	rw    sync.RWMutex    // writes hold it shared, collections exclusively
	mu    sync.Mutex      // guards known
	known map[string]bool // chunk keys stored (by this process or seen)
	// refs caches, by object key, the chunk keys each checkpoint object
	// of the directory names, as last read by a collection (which holds
	// rw exclusively, so it needs no other lock). Objects are written
	// once; an entry is used only while the object's size and
	// modification time are the ones it was read with.
	refs map[string]objectRefs
}

// objectRefs is what a collection read from one checkpoint object.
type objectRefs struct {
	size   int64
	mod    time.Time
	chunks []string // chunk keys; nil for a plain archive
}

// New returns a deduplicating backend over inner.
func New(inner storage.Backend) *Dedup {
	return &Dedup{inner: inner, Grace: DefaultGrace, Workers: 4, dirs: map[string]*dirState{}}
}

var _ storage.Wrapper = (*Dedup)(nil)

// Name names the inner backend.
func (d *Dedup) Name() string { return d.inner.Name() }

// Inner is the backend the objects live in.
func (d *Dedup) Inner() storage.Backend { return d.inner }

// dir returns the state of the directory of key, and that directory's
// chunk prefix.
func (d *Dedup) dir(key string) (*dirState, string) {
	dir := path.Dir(key)
	prefix := chunkDir + "/"
	if dir != "." {
		prefix = dir + "/" + prefix
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.dirs[prefix]
	if s == nil {
		s = &dirState{known: map[string]bool{}}
		d.dirs[prefix] = s
	}
	return s, prefix
}

// chunkKey is the key of a chunk under a directory's chunk prefix.
func chunkKey(prefix string, r Ref) string {
	return prefix + "sha256/" + r.Digest[:2] + "/" + r.Digest
}

// isChunk reports whether key is a chunk of some directory.
func isChunk(key string) bool {
	return strings.HasPrefix(key, chunkDir+"/sha256/") || strings.Contains(key, "/"+chunkDir+"/sha256/")
}

// Stat reports the checkpoint's object (its stored size, not the
// archive's).
func (d *Dedup) Stat(ctx context.Context, key string) (storage.Info, error) {
	return d.inner.Stat(ctx, key)
}

// List lists the objects under prefix, without the chunks.
func (d *Dedup) List(ctx context.Context, prefix string) ([]storage.Info, error) {
	all, err := d.inner.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(i storage.Info) bool { return isChunk(i.Key) }), nil
}

// Delete removes a checkpoint, then the chunks of its directory that no
// remaining checkpoint needs. A failed collection is not an error of the
// delete (the checkpoint is gone; the next one retries); it is returned
// wrapped in a *CollectError so that callers can log it.
func (d *Dedup) Delete(ctx context.Context, key string) error {
	if isChunk(key) {
		return fmt.Errorf("%w: %s is a chunk, not a checkpoint", storage.ErrInvalidKey, key)
	}
	st, prefix := d.dir(key)
	st.rw.Lock()
	defer st.rw.Unlock()
	if err := d.inner.Delete(ctx, key); err != nil {
		return err
	}
	if _, err := d.collect(ctx, st, prefix, time.Now()); err != nil {
		return &CollectError{Dir: path.Dir(key), Err: err}
	}
	return nil
}

// CollectError is a collection that failed after its checkpoint was
// deleted.
type CollectError struct {
	Dir string
	Err error
}

func (e *CollectError) Error() string {
	return fmt.Sprintf("collect unused chunks of %s: %v", e.Dir, e.Err)
}

func (e *CollectError) Unwrap() error { return e.Err }

// Collect deletes the unreferenced chunks of key's directory that are
// older than the grace period, and returns how many it deleted.
func (d *Dedup) Collect(ctx context.Context, key string, now time.Time) (int, error) {
	st, prefix := d.dir(key)
	st.rw.Lock()
	defer st.rw.Unlock()
	return d.collect(ctx, st, prefix, now)
}

// collect is Collect with the directory locked. A checkpoint object it
// cannot read stops it: deleting what only that object names would break
// it.
//
// Only chunks older than the grace period can go, so without one no
// manifest is read; and a manifest read once is not read again while its
// object stays the same (dirState.refs). A job's periodic checkpoints
// delete one old checkpoint each under a retention policy: reading every
// remaining manifest each time cost a list, and an open and two reads
// per checkpoint kept, for nothing when no chunk was old enough.
func (d *Dedup) collect(ctx context.Context, st *dirState, prefix string, now time.Time) (int, error) {
	dir := strings.TrimSuffix(prefix, chunkDir+"/")
	objs, err := d.inner.List(ctx, dir)
	if err != nil {
		return 0, err
	}
	var chunks, checkpoints []storage.Info // chunks: those old enough to go
	for _, o := range objs {
		if strings.HasPrefix(o.Key, prefix) {
			if now.Sub(o.ModTime) >= d.Grace {
				chunks = append(chunks, o)
			}
			continue
		}
		if strings.Contains(strings.TrimPrefix(o.Key, dir), "/") {
			continue // another directory's
		}
		checkpoints = append(checkpoints, o)
	}
	if len(chunks) == 0 {
		return 0, nil
	}
	live := map[string]bool{}
	refs := make(map[string]objectRefs, len(checkpoints))
	for _, o := range checkpoints {
		r, ok := st.refs[o.Key]
		if !ok || r.size != o.Size || !r.mod.Equal(o.ModTime) {
			m, err := d.readManifest(ctx, o.Key)
			switch {
			case errors.Is(err, storage.ErrNotExist):
				continue
			case errors.Is(err, errNotDedup):
				m = &Manifest{}
			case err != nil:
				return 0, fmt.Errorf("%s: %w", o.Key, err)
			}
			r = objectRefs{size: o.Size, mod: o.ModTime}
			for _, c := range m.Chunks {
				r.chunks = append(r.chunks, chunkKey(prefix, c.Ref))
			}
		}
		refs[o.Key] = r
		for _, k := range r.chunks {
			live[k] = true
		}
	}
	st.refs = refs // only the objects listed now
	deleted := 0
	for _, c := range chunks {
		if live[c.Key] {
			continue
		}
		if err := d.inner.Delete(ctx, c.Key); err != nil && !errors.Is(err, storage.ErrNotExist) {
			return deleted, err
		}
		st.mu.Lock()
		delete(st.known, c.Key)
		st.mu.Unlock()
		deleted++
	}
	return deleted, nil
}

// errNotDedup means an object has no trailer: a plain archive.
var errNotDedup = errors.New("not a deduplicated checkpoint")

// readManifest reads the manifest of the checkpoint object at key.
func (d *Dedup) readManifest(ctx context.Context, key string) (*Manifest, error) {
	obj, err := d.inner.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	m, _, err := readTrailer(obj)
	return m, err
}

// readTrailer reads and validates the manifest at the end of obj, and
// returns it with its offset; errNotDedup when obj has no trailer.
func readTrailer(obj storage.Object) (*Manifest, int64, error) {
	size := obj.Size()
	n, ok, err := trailer(obj, size)
	if err != nil {
		return nil, 0, err
	}
	if !ok {
		return nil, 0, errNotDedup
	}
	if n > maxManifest || int64(n) > size-trailerLen {
		return nil, 0, fmt.Errorf("%w: manifest of %d bytes in an object of %d", storage.ErrCorrupt, n, size)
	}
	at := size - trailerLen - int64(n)
	data := make([]byte, n)
	if _, err := obj.ReadAt(data, at); err != nil {
		return nil, 0, err
	}
	m, err := parseManifest(data)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", storage.ErrCorrupt, err)
	}
	if m.Skeleton != at {
		return nil, 0, fmt.Errorf("%w: skeleton of %d bytes, %d stored", storage.ErrCorrupt, m.Skeleton, at)
	}
	return m, at, nil
}

// IsCheckpointFile reports whether the file at path is a deduplicated
// checkpoint object (whose chunks are in the chunks directory next to it).
func IsCheckpointFile(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false
	}
	_, ok, err := trailer(f, st.Size())
	return ok && err == nil
}

// trailer reads the trailer at the end of the size bytes of r: whether
// there is one, and the length of the manifest before it.
func trailer(r io.ReaderAt, size int64) (uint64, bool, error) {
	var t [trailerLen]byte
	if size < trailerLen {
		return 0, false, nil
	}
	if _, err := r.ReadAt(t[:], size-trailerLen); err != nil {
		return 0, false, err
	}
	return binary.LittleEndian.Uint64(t[:8]), string(t[8:]) == trailerMagic, nil
}

// sum returns the SHA-256 of b as a Ref.
func sum(b []byte) Ref {
	s := sha256.Sum256(b)
	return Ref{Digest: hex.EncodeToString(s[:]), Size: int64(len(b))}
}

// readAll reads the whole object at key, at most limit bytes.
func readAll(obj storage.Object, limit int64) ([]byte, error) {
	if obj.Size() > limit {
		return nil, fmt.Errorf("%w: %d bytes, at most %d expected", storage.ErrCorrupt, obj.Size(), limit)
	}
	b := make([]byte, obj.Size())
	if _, err := obj.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b, nil
}
