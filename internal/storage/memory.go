package storage

import (
	"bytes"
	"context"
	"io"
	"sort"
	"strings"
	"sync"
	"time"
)

// Memory is an in-memory Backend for unit tests of code that uses storage. It keeps the
// contract (objects visible only after Commit) but no data survives the process.
type Memory struct {
	mu      sync.Mutex
	objects map[string]memObject
	// Fail, when set, is called before every operation with its name and key; a non-nil
	// result is returned as that operation's error (fault injection).
	Fail func(op, key string) error
}

type memObject struct {
	data    []byte
	modTime time.Time
}

var _ Backend = (*Memory)(nil)

// NewMemory returns an empty in-memory backend.
func NewMemory() *Memory { return &Memory{objects: map[string]memObject{}} }

// Name implements Backend.
func (m *Memory) Name() string { return "memory" }

func (m *Memory) check(op, key string) error {
	if m.Fail != nil {
		if err := m.Fail(op, key); err != nil {
			return &Error{Backend: m.Name(), Op: op, Key: key, Err: err}
		}
	}
	return nil
}

// Create implements Backend.
func (m *Memory) Create(ctx context.Context, key string) (Writer, error) {
	if err := CheckKey(key); err != nil {
		return nil, &Error{Backend: m.Name(), Op: "create", Key: key, Err: err}
	}
	if err := m.check("create", key); err != nil {
		return nil, err
	}
	return &memWriter{m: m, ctx: ctx, key: key}, nil
}

type memWriter struct {
	m    *Memory
	ctx  context.Context
	key  string
	buf  bytes.Buffer
	done bool
}

func (w *memWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, &Error{Backend: w.m.Name(), Op: "write", Key: w.key, Err: ErrClosed}
	}
	if err := w.m.check("write", w.key); err != nil {
		return 0, err
	}
	if err := w.ctx.Err(); err != nil {
		return 0, &Error{Backend: w.m.Name(), Op: "write", Key: w.key, Err: err}
	}
	return w.buf.Write(p)
}

func (w *memWriter) Commit() error {
	if w.done {
		return &Error{Backend: w.m.Name(), Op: "commit", Key: w.key, Err: ErrClosed}
	}
	w.done = true
	if err := w.m.check("commit", w.key); err != nil {
		return err
	}
	if err := w.ctx.Err(); err != nil {
		return &Error{Backend: w.m.Name(), Op: "commit", Key: w.key, Err: err}
	}
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	w.m.objects[w.key] = memObject{data: bytes.Clone(w.buf.Bytes()), modTime: time.Now()}
	return nil
}

func (w *memWriter) Abort() error { w.done = true; return nil }

// Open implements Backend.
func (m *Memory) Open(ctx context.Context, key string) (Object, error) {
	if err := m.check("open", key); err != nil {
		return nil, err
	}
	m.mu.Lock()
	o, ok := m.objects[key]
	m.mu.Unlock()
	if !ok {
		return nil, &Error{Backend: m.Name(), Op: "open", Key: key, Err: ErrNotExist}
	}
	return &memReader{r: bytes.NewReader(o.data)}, nil
}

type memReader struct{ r *bytes.Reader }

func (o *memReader) ReadAt(p []byte, off int64) (int, error) { return o.r.ReadAt(p, off) }
func (o *memReader) Size() int64                             { return o.r.Size() }
func (o *memReader) Close() error                            { return nil }
func (o *memReader) Stream(off, n int64) (io.ReadCloser, error) {
	off, n, err := clampRange(off, n, o.r.Size())
	if err != nil {
		return nil, err
	}
	return sectionCloser{io.NewSectionReader(o.r, off, n)}, nil
}

// Stat implements Backend.
func (m *Memory) Stat(ctx context.Context, key string) (Info, error) {
	if err := m.check("stat", key); err != nil {
		return Info{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objects[key]
	if !ok {
		return Info{}, &Error{Backend: m.Name(), Op: "stat", Key: key, Err: ErrNotExist}
	}
	return Info{Key: key, Size: int64(len(o.data)), ModTime: o.modTime}, nil
}

// List implements Backend.
func (m *Memory) List(ctx context.Context, prefix string) ([]Info, error) {
	if err := m.check("list", prefix); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Info
	for k, o := range m.objects {
		if strings.HasPrefix(k, prefix) {
			out = append(out, Info{Key: k, Size: int64(len(o.data)), ModTime: o.modTime})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete implements Backend.
func (m *Memory) Delete(ctx context.Context, key string) error {
	if err := m.check("delete", key); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.objects, key)
	return nil
}

// Corrupt flips one byte of a stored object at off (for tamper tests of wrappers).
func (m *Memory) Corrupt(key string, off int64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objects[key]
	if !ok || off < 0 || off >= int64(len(o.data)) {
		return false
	}
	o.data[off] ^= 0x5a
	return true
}
