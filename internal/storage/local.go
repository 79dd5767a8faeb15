package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Dir is a backend over a directory: the local checkpoint directory ("local") or a shared
// mount such as NFS or CephFS ("dir"). An object is written to a temporary file in its
// final directory, fsynced, then renamed over its final name, and the directory is fsynced:
// the rename is the commit point. Temporary files are named ".cedana-tmp-*" and List never
// reports them; a killed writer can leave one behind, which SweepTemp removes.
type Dir struct {
	root string
	kind string // "local" or "dir", for messages
}

var _ Backend = (*Dir)(nil)

// NewDir returns a backend storing objects under root, which must exist. kind is "local"
// or "dir" and only changes messages.
func NewDir(kind, root string) (*Dir, error) {
	if kind == "" {
		kind = "dir"
	}
	d := &Dir{root: filepath.Clean(root), kind: kind}
	if root == "" {
		return nil, d.err("open", "", errors.New("no directory configured"), "set storage.dir.path")
	}
	st, err := os.Stat(d.root)
	if err != nil {
		return nil, d.fsErr("open", "", err)
	}
	if !st.IsDir() {
		return nil, d.err("open", "", fmt.Errorf("%s is not a directory", d.root), "point storage.dir.path at a directory")
	}
	return d, nil
}

// Name implements Backend.
func (d *Dir) Name() string { return d.kind + ":" + d.root }

// Root is the directory objects are stored under.
func (d *Dir) Root() string { return d.root }

// Path is the file an object key is stored in.
func (d *Dir) Path(key string) string { return filepath.Join(d.root, filepath.FromSlash(key)) }

func (d *Dir) err(op, key string, err error, hint string) error {
	return &Error{Backend: d.Name(), Op: op, Key: key, Err: err, Hint: hint}
}

// fsErr classifies an error from the file system.
func (d *Dir) fsErr(op, key string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist) && key == "":
		return d.err(op, key, withKind(ErrNoBucket, err), "create the directory or fix storage.dir.path")
	case errors.Is(err, fs.ErrNotExist):
		return d.err(op, key, withKind(ErrNotExist, err), "")
	case errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT):
		return d.err(op, key, withKind(ErrNoSpace, err), "free space on "+d.root+" or delete old checkpoints")
	case errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS):
		return d.err(op, key, withKind(ErrAccess, err), "check the permissions and mount options of "+d.root)
	case errors.Is(err, syscall.ESTALE) || errors.Is(err, syscall.EIO) || errors.Is(err, syscall.ENOTCONN) ||
		errors.Is(err, syscall.EHOSTDOWN) || errors.Is(err, syscall.ETIMEDOUT):
		return d.err(op, key, withKind(ErrUnreachable, err), "check the mount of "+d.root)
	}
	return d.err(op, key, err, "")
}

// Create implements Backend.
func (d *Dir) Create(ctx context.Context, key string) (Writer, error) {
	if err := CheckKey(key); err != nil {
		return nil, d.err("create", key, err, "")
	}
	if err := ctx.Err(); err != nil {
		return nil, d.err("create", key, err, "")
	}
	final := d.Path(key)
	dir := filepath.Dir(final)
	// 0700: objects hold process memory (keys, tokens, user data).
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, d.fsErr("create", key, err)
	}
	f, err := os.CreateTemp(dir, reservedPrefix+"tmp-*")
	if err != nil {
		return nil, d.fsErr("create", key, err)
	}
	return &dirWriter{d: d, ctx: ctx, key: key, final: final, f: f}, nil
}

type dirWriter struct {
	d     *Dir
	ctx   context.Context
	key   string
	final string
	f     *os.File
	done  bool
}

func (w *dirWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, w.d.err("write", w.key, ErrClosed, "")
	}
	if err := w.ctx.Err(); err != nil {
		return 0, w.d.err("write", w.key, err, "")
	}
	n, err := w.f.Write(p)
	if err != nil {
		return n, w.d.fsErr("write", w.key, err)
	}
	return n, nil
}

// ReadFrom lets io.Copy from a file use copy_file_range or splice, as cp does.
func (w *dirWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.done {
		return 0, w.d.err("write", w.key, ErrClosed, "")
	}
	if err := w.ctx.Err(); err != nil {
		return 0, w.d.err("write", w.key, err, "")
	}
	n, err := w.f.ReadFrom(r)
	if err != nil {
		return n, w.d.fsErr("write", w.key, err)
	}
	return n, nil
}

func (w *dirWriter) Commit() error {
	if w.done {
		return w.d.err("commit", w.key, ErrClosed, "")
	}
	if err := w.ctx.Err(); err != nil {
		_ = w.Abort()
		return w.d.err("commit", w.key, err, "")
	}
	w.done = true
	tmp := w.f.Name()
	fail := func(err error) error {
		_ = os.Remove(tmp)
		return w.d.fsErr("commit", w.key, err)
	}
	if err := w.f.Chmod(0o600); err != nil { // archives hold process memory
		_ = w.f.Close()
		return fail(err)
	}
	if err := w.f.Sync(); err != nil {
		_ = w.f.Close()
		return fail(err)
	}
	if err := w.f.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, w.final); err != nil {
		return fail(err)
	}
	if err := syncDir(filepath.Dir(w.final)); err != nil {
		return w.d.fsErr("commit", w.key, err)
	}
	return nil
}

func (w *dirWriter) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	_ = w.f.Close()
	if err := os.Remove(w.f.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return w.d.fsErr("abort", w.key, err)
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

// Open implements Backend.
func (d *Dir) Open(ctx context.Context, key string) (Object, error) {
	if err := CheckKey(key); err != nil {
		return nil, d.err("open", key, err, "")
	}
	f, err := os.Open(d.Path(key))
	if err != nil {
		return nil, d.fsErr("open", key, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, d.fsErr("open", key, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, d.err("open", key, withKind(ErrNotExist, errors.New("not a regular file")), "")
	}
	return &fileObject{d: d, key: key, f: f, size: st.Size()}, nil
}

type fileObject struct {
	d    *Dir
	key  string
	f    *os.File
	size int64
}

func (o *fileObject) ReadAt(p []byte, off int64) (int, error) {
	n, err := o.f.ReadAt(p, off)
	if err != nil && err != io.EOF {
		return n, o.d.fsErr("read", o.key, err)
	}
	return n, err
}

func (o *fileObject) Size() int64 { return o.size }

func (o *fileObject) Stream(off, n int64) (io.ReadCloser, error) {
	off, n, err := clampRange(off, n, o.size)
	if err != nil {
		return nil, o.d.err("read", o.key, err, "")
	}
	// A new open file description of the same inode (even if the name was replaced
	// since), with its own offset: streams do not disturb each other, and io.Copy into
	// a file can use copy_file_range.
	f, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", o.f.Fd()))
	if err != nil {
		return sectionCloser{io.NewSectionReader(o.f, off, n)}, nil
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return nil, o.d.fsErr("read", o.key, err)
	}
	return &fileStream{f: f, lr: io.LimitedReader{R: f, N: n}}, nil
}

type fileStream struct {
	f  *os.File
	lr io.LimitedReader
}

func (s *fileStream) Read(p []byte) (int, error) { return s.lr.Read(p) }

// WriteTo hands the limited file to io.Copy, so a file destination uses copy_file_range.
func (s *fileStream) WriteTo(w io.Writer) (int64, error) { return io.Copy(w, &s.lr) }

func (s *fileStream) Close() error { return s.f.Close() }

// File is the open file behind the object, for callers that can use it directly (mmap,
// copy_file_range). It stays owned by the Object.
func (o *fileObject) File() *os.File { return o.f }

func (o *fileObject) Close() error { return o.f.Close() }

// Stat implements Backend.
func (d *Dir) Stat(ctx context.Context, key string) (Info, error) {
	if err := CheckKey(key); err != nil {
		return Info{}, d.err("stat", key, err, "")
	}
	st, err := os.Stat(d.Path(key))
	if err != nil {
		return Info{}, d.fsErr("stat", key, err)
	}
	if !st.Mode().IsRegular() {
		return Info{}, d.err("stat", key, withKind(ErrNotExist, errors.New("not a regular file")), "")
	}
	return Info{Key: key, Size: st.Size(), ModTime: st.ModTime()}, nil
}

// List implements Backend.
func (d *Dir) List(ctx context.Context, prefix string) ([]Info, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, d.err("list", prefix, err, "")
	}
	// Walk only the directory the prefix lies in.
	start := d.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = d.Path(prefix[:i])
	}
	var out []Info
	err := filepath.WalkDir(start, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path != d.root {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if strings.HasPrefix(e.Name(), reservedPrefix) {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(d.root, path)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if e.IsDir() {
			if path != start && !strings.HasPrefix(key+"/", prefix) && !strings.HasPrefix(prefix, key+"/") {
				return filepath.SkipDir
			}
			return nil
		}
		if !e.Type().IsRegular() || !strings.HasPrefix(key, prefix) {
			return nil
		}
		st, err := e.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted while listing
			}
			return err
		}
		out = append(out, Info{Key: key, Size: st.Size(), ModTime: st.ModTime()})
		return nil
	})
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, d.err("list", prefix, err, "")
		}
		return nil, d.fsErr("list", "", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete implements Backend.
func (d *Dir) Delete(ctx context.Context, key string) error {
	if err := CheckKey(key); err != nil {
		return d.err("delete", key, err, "")
	}
	p := d.Path(key)
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return d.fsErr("delete", key, err)
	}
	if err := syncDir(filepath.Dir(p)); err != nil {
		return d.fsErr("delete", key, err)
	}
	return nil
}

// SweepTemp removes temporary files older than olderThan that writers killed mid-way
// left under the root, and returns how many it removed.
func (d *Dir) SweepTemp(olderThan time.Duration) (int, error) {
	n := 0
	err := filepath.WalkDir(d.root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if !e.IsDir() && strings.HasPrefix(e.Name(), reservedPrefix+"tmp-") {
			if st, err := e.Info(); err != nil || time.Since(st.ModTime()) < olderThan {
				return nil
			}
			if os.Remove(path) == nil {
				n++
			}
		}
		return nil
	})
	return n, err
}
