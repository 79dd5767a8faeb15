package chunks

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"sync"

	"github.com/zeebo/xxh3"

	"github.com/cedana/cedana/internal/storage"
)

// Stats says what a write stored.
type Stats struct {
	Chunks, NewChunks int   // chunks referenced; those written because missing
	Bytes, NewBytes   int64 // their bytes
	Skeleton          int64 // bytes stored in the checkpoint's object
}

// Writer writes one deduplicated checkpoint. It is a storage.Writer and
// an archive.FrameDestination.
type Writer struct {
	d      *Dedup
	ctx    context.Context
	key    string
	prefix string
	st     *dirState
	obj    storage.Writer // the checkpoint's object: skeleton, then manifest
	skel   hash.Hash
	pos    int64 // bytes of the archive received

	mu    sync.Mutex
	marks []mark // announced frames not yet reached, in order

	cur   *pending // the frame being received
	segs  []*pending
	sem   chan struct{} // bounds the frames being hashed and stored
	wg    sync.WaitGroup
	errMu sync.Mutex
	err   error
	stats Stats
	done  bool
}

type mark struct{ off, n int64 }

// pending is a frame being received, then hashed and stored.
type pending struct {
	off  int64
	buf  []byte // the frame, within full
	full []byte // the pooled buffer
	ref  Ref
	xxh  string
}

// bufPool holds buffers for frames of pooledFrame bytes or more; smaller
// ones (the single frame of a small image) get a buffer of their size.
var bufPool = sync.Pool{New: func() any { return make([]byte, 0, 4<<20+64<<10) }}

const pooledFrame = 1 << 20

// Create starts the checkpoint at key. The directory of key is locked
// against collection until Commit or Abort.
func (d *Dedup) Create(ctx context.Context, key string) (storage.Writer, error) {
	if isChunk(key) {
		return nil, fmt.Errorf("%w: %s is a chunk key", storage.ErrInvalidKey, key)
	}
	st, prefix := d.dir(key)
	st.rw.RLock()
	obj, err := d.inner.Create(ctx, key)
	if err != nil {
		st.rw.RUnlock()
		return nil, err
	}
	workers := max(d.Workers, 1)
	return &Writer{d: d, ctx: ctx, key: key, prefix: prefix, st: st, obj: obj, skel: sha256.New(),
		sem: make(chan struct{}, workers)}, nil
}

// Frame announces that the n bytes at offset off of the archive form one
// independent frame (archive.FrameDestination).
func (w *Writer) Frame(off, n int64) {
	if n < MinChunk || n > maxChunk {
		return
	}
	w.mu.Lock()
	w.marks = append(w.marks, mark{off, n})
	w.mu.Unlock()
}

// nextMark returns the first announced frame at or after the current
// position.
func (w *Writer) nextMark() (mark, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.marks) > 0 && w.marks[0].off < w.pos {
		w.marks = w.marks[1:] // cannot happen with a well-behaved writer
	}
	if len(w.marks) == 0 {
		return mark{}, false
	}
	return w.marks[0], true
}

func (w *Writer) popMark() {
	w.mu.Lock()
	w.marks = w.marks[1:]
	w.mu.Unlock()
}

// Write receives the next bytes of the archive.
func (w *Writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, storage.ErrClosed
	}
	n := len(p)
	for len(p) > 0 {
		if err := w.failed(); err != nil {
			return 0, err
		}
		if w.cur != nil {
			c := min(len(p), cap(w.cur.buf)-len(w.cur.buf))
			w.cur.buf = append(w.cur.buf, p[:c]...)
			w.pos += int64(c)
			p = p[c:]
			if len(w.cur.buf) == cap(w.cur.buf) {
				w.store(w.cur)
				w.cur = nil
			}
			continue
		}
		m, ok := w.nextMark()
		if ok && m.off == w.pos {
			w.popMark()
			var buf []byte
			if m.n >= pooledFrame { // a full frame: pooled buffers
				buf = bufPool.Get().([]byte)
			}
			if int64(cap(buf)) < m.n {
				buf = make([]byte, 0, m.n)
			}
			w.cur = &pending{off: m.off, buf: buf[:0:m.n], full: buf}
			continue
		}
		c := len(p)
		if ok && m.off-w.pos < int64(c) {
			c = int(m.off - w.pos)
		}
		if _, err := w.obj.Write(p[:c]); err != nil {
			w.fail(err)
			return 0, err
		}
		w.skel.Write(p[:c])
		w.stats.Skeleton += int64(c)
		w.pos += int64(c)
		p = p[c:]
	}
	return n, nil
}

// store hashes a complete frame and stores it unless present, on one of
// the writer's workers.
func (w *Writer) store(f *pending) {
	w.segs = append(w.segs, f)
	w.sem <- struct{}{}
	w.wg.Go(func() {
		defer func() { <-w.sem }()
		f.ref = sum(f.buf)
		x := xxh3.Hash128(f.buf).Bytes()
		f.xxh = hex.EncodeToString(x[:])
		isNew, err := w.put(f.ref, f.buf)
		if cap(f.full) >= pooledFrame {
			bufPool.Put(f.full[:0])
		}
		f.buf, f.full = nil, nil
		w.errMu.Lock()
		defer w.errMu.Unlock()
		if err != nil {
			if w.err == nil {
				w.err = err
			}
			return
		}
		w.stats.Chunks++
		w.stats.Bytes += f.ref.Size
		if isNew {
			w.stats.NewChunks++
			w.stats.NewBytes += f.ref.Size
		}
	})
}

// put stores data as chunk ref unless the directory has it.
func (w *Writer) put(ref Ref, data []byte) (bool, error) {
	key := chunkKey(w.prefix, ref)
	w.st.mu.Lock()
	known := w.st.known[key]
	w.st.mu.Unlock()
	if known {
		return false, nil
	}
	if _, err := w.d.inner.Stat(w.ctx, key); err == nil {
		w.remember(key)
		return false, nil
	} else if !errors.Is(err, storage.ErrNotExist) {
		return false, fmt.Errorf("chunk %s: %w", key, err)
	}
	cw, err := w.d.inner.Create(w.ctx, key)
	if err != nil {
		return false, fmt.Errorf("chunk %s: %w", key, err)
	}
	if _, err := cw.Write(data); err != nil {
		_ = cw.Abort()
		return false, fmt.Errorf("chunk %s: %w", key, err)
	}
	if err := cw.Commit(); err != nil {
		return false, fmt.Errorf("chunk %s: %w", key, err)
	}
	w.remember(key)
	return true, nil
}

func (w *Writer) remember(key string) {
	w.st.mu.Lock()
	w.st.known[key] = true
	w.st.mu.Unlock()
}

func (w *Writer) failed() error {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.err
}

func (w *Writer) fail(err error) {
	w.errMu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.errMu.Unlock()
}

// Commit waits for the chunks, appends the manifest and commits the
// checkpoint's object: only then does the checkpoint exist.
func (w *Writer) Commit() error {
	if w.done {
		return storage.ErrClosed
	}
	w.done = true
	defer w.st.rw.RUnlock()
	w.wg.Wait()
	err := w.failed()
	if err == nil && w.cur != nil {
		err = fmt.Errorf("archive ended inside a frame announced at %d", w.cur.off)
	}
	if err != nil {
		_ = w.obj.Abort()
		return err
	}
	m := &Manifest{Version: ManifestVersion, Size: w.pos, Skeleton: w.stats.Skeleton,
		SkeletonSHA256: hex.EncodeToString(w.skel.Sum(nil))}
	for _, f := range w.segs {
		m.Chunks = append(m.Chunks, Segment{Off: f.off, XXH3: f.xxh, Ref: f.ref})
	}
	if err := m.validate(); err != nil {
		_ = w.obj.Abort()
		return fmt.Errorf("checkpoint %s: %w", w.key, err)
	}
	data, err := json.Marshal(m)
	if err != nil {
		_ = w.obj.Abort()
		return err
	}
	var t [trailerLen]byte
	binary.LittleEndian.PutUint64(t[:8], uint64(len(data)))
	copy(t[8:], trailerMagic)
	if _, err := w.obj.Write(append(data, t[:]...)); err != nil {
		_ = w.obj.Abort()
		return err
	}
	return w.obj.Commit()
}

// Abort discards the checkpoint; the chunks it stored are collected later.
func (w *Writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	defer w.st.rw.RUnlock()
	w.wg.Wait()
	if w.cur != nil {
		if cap(w.cur.full) >= pooledFrame {
			bufPool.Put(w.cur.full[:0])
		}
		w.cur = nil
	}
	return w.obj.Abort()
}

// Stats says what the write stored; complete after Commit.
func (w *Writer) Stats() Stats {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.stats
}
