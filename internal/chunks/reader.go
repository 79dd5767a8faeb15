package chunks

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"

	"github.com/zeebo/xxh3"

	"github.com/cedana/cedana/internal/storage"
)

// cacheChunks is how many verified chunks an open checkpoint keeps: the
// readers above read a chunk in a few pieces, not necessarily in order.
const cacheChunks = 8

// Open returns the archive stored at key: assembled from its skeleton and
// chunks when it is a deduplicated checkpoint, the object itself when it
// is a plain archive. The skeleton is read and checked here; each chunk is
// checked against its SHA-256 before any of its bytes is returned, and a
// missing or corrupt chunk fails the read with an error naming the
// checkpoint and the chunk.
func (d *Dedup) Open(ctx context.Context, key string) (storage.Object, error) {
	obj, err := d.inner.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	m, at, err := readTrailer(obj)
	if errors.Is(err, errNotDedup) {
		return obj, nil
	}
	if err != nil {
		obj.Close()
		return nil, fmt.Errorf("checkpoint %s: %w", key, err)
	}
	skel := make([]byte, at)
	if _, err := obj.ReadAt(skel, 0); err != nil && !errors.Is(err, io.EOF) {
		obj.Close()
		return nil, fmt.Errorf("checkpoint %s: read skeleton: %w", key, err)
	}
	obj.Close()
	if s := sha256.Sum256(skel); hex.EncodeToString(s[:]) != m.SkeletonSHA256 {
		return nil, fmt.Errorf("checkpoint %s: %w: its own bytes have SHA-256 %x, want %s",
			key, storage.ErrCorrupt, s, m.SkeletonSHA256)
	}
	_, prefix := d.dir(key)
	o := &object{d: d, ctx: ctx, key: key, prefix: prefix, m: m, skel: skel,
		before: make([]int64, len(m.Chunks)+1), cache: map[string]*list.Element{}, lru: list.New()}
	for i, c := range m.Chunks {
		o.before[i+1] = o.before[i] + c.Size
	}
	return o, nil
}

// object is an open deduplicated checkpoint.
type object struct {
	d      *Dedup
	ctx    context.Context
	key    string
	prefix string
	m      *Manifest
	skel   []byte
	before []int64 // before[i]: bytes of the chunks before chunk i

	mu    sync.Mutex
	cache map[string]*list.Element // chunk key → *cached in lru
	lru   *list.List
}

// cached is a chunk being fetched or fetched and verified.
type cached struct {
	key  string
	done chan struct{}
	data []byte
	err  error
}

func (o *object) Size() int64 { return o.m.Size }

func (o *object) Close() error {
	o.mu.Lock()
	o.cache, o.lru = map[string]*list.Element{}, list.New()
	o.mu.Unlock()
	return nil
}

// Stream returns the n bytes at off (to the end when n < 0).
func (o *object) Stream(off, n int64) (io.ReadCloser, error) {
	if off < 0 || off > o.m.Size {
		return nil, fmt.Errorf("checkpoint %s: offset %d outside %d bytes", o.key, off, o.m.Size)
	}
	if n < 0 || n > o.m.Size-off {
		n = o.m.Size - off
	}
	return io.NopCloser(io.NewSectionReader(o, off, n)), nil
}

// find returns the first chunk that ends after archive offset off, and
// whether off lies in it (otherwise off lies in the skeleton, before it).
func (o *object) find(off int64) (int, bool) {
	i := sort.Search(len(o.m.Chunks), func(i int) bool {
		c := o.m.Chunks[i]
		return c.Off+c.Size > off
	})
	return i, i < len(o.m.Chunks) && o.m.Chunks[i].Off <= off
}

// ReadAt reads the archive's bytes at off.
func (o *object) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("checkpoint %s: negative offset", o.key)
	}
	n := 0
	for len(p) > 0 {
		if off >= o.m.Size {
			return n, io.EOF
		}
		i, inChunk := o.find(off)
		var c int
		if inChunk {
			seg := o.m.Chunks[i]
			data, err := o.chunk(seg)
			if err != nil {
				return n, err
			}
			c = copy(p, data[off-seg.Off:])
		} else {
			end := o.m.Size
			if i < len(o.m.Chunks) {
				end = o.m.Chunks[i].Off
			}
			s := off - o.before[i]
			c = copy(p[:min(int64(len(p)), end-off)], o.skel[s:])
		}
		n += c
		off += int64(c)
		p = p[c:]
	}
	return n, nil
}

// chunk returns the verified bytes of seg, from the cache or fetched.
func (o *object) chunk(seg Segment) ([]byte, error) {
	key := chunkKey(o.prefix, seg.Ref)
	o.mu.Lock()
	if el, ok := o.cache[key]; ok {
		o.lru.MoveToFront(el)
		c := el.Value.(*cached)
		o.mu.Unlock()
		<-c.done
		return c.data, c.err
	}
	c := &cached{key: key, done: make(chan struct{})}
	o.cache[key] = o.lru.PushFront(c)
	for o.lru.Len() > cacheChunks {
		old := o.lru.Back()
		o.lru.Remove(old)
		delete(o.cache, old.Value.(*cached).key)
	}
	o.mu.Unlock()
	c.data, c.err = o.fetch(key, seg)
	close(c.done)
	if c.err != nil { // not cached: a later read tries again
		o.mu.Lock()
		if el, ok := o.cache[key]; ok && el.Value == c {
			o.lru.Remove(el)
			delete(o.cache, key)
		}
		o.mu.Unlock()
	}
	return c.data, c.err
}

// fetch reads chunk seg and checks it.
func (o *object) fetch(key string, seg Segment) ([]byte, error) {
	ref := seg.Ref
	obj, err := o.d.inner.Open(o.ctx, key)
	if err != nil {
		if errors.Is(err, storage.ErrNotExist) {
			return nil, fmt.Errorf("checkpoint %s: chunk %s is missing: %w", o.key, key, storage.ErrCorrupt)
		}
		return nil, fmt.Errorf("checkpoint %s: chunk %s: %w", o.key, key, err)
	}
	defer obj.Close()
	if obj.Size() != ref.Size {
		return nil, fmt.Errorf("checkpoint %s: chunk %s is corrupt (%d bytes, want %d): %w",
			o.key, key, obj.Size(), ref.Size, storage.ErrCorrupt)
	}
	data, err := readAll(obj, maxChunk)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: chunk %s: %w", o.key, key, err)
	}
	if x := xxh3.Hash128(data).Bytes(); hex.EncodeToString(x[:]) != seg.XXH3 {
		return nil, fmt.Errorf("checkpoint %s: chunk %s is corrupt (XXH3-128 %x, want %s): %w",
			o.key, key, x, seg.XXH3, storage.ErrCorrupt)
	}
	return data, nil
}

// FileAt returns the chunk file holding the n bytes at off, when they lie
// in one chunk stored as a plain local file (archive.FileAter): a restore
// splices them from the page cache. The chunk is checked when read through
// ReadAt (the archive reader's digest pass does that first).
func (o *object) FileAt(off, n int64) (*os.File, int64, bool) {
	i, inChunk := o.find(off)
	if !inChunk || off+n > o.m.Chunks[i].Off+o.m.Chunks[i].Size {
		return nil, 0, false
	}
	seg := o.m.Chunks[i]
	p, ok := storage.LocalPath(o.d.inner, chunkKey(o.prefix, seg.Ref))
	if !ok {
		return nil, 0, false
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, false
	}
	if st, err := f.Stat(); err != nil || st.Size() != seg.Size {
		f.Close()
		return nil, 0, false
	}
	return f, off - seg.Off, true
}

// DirectReads reports whether readers should read the object directly,
// without a block cache in front: true when the chunks are local files
// (fetching one again costs a copy from the page cache).
func (o *object) DirectReads() bool { return storage.IsLocal(o.d.inner) }
