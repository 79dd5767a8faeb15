package template

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/storage"
)

// Templates in a storage backend. The layout, under the backend's root:
//
//	templates/NAME/template.json   the metadata (Template): the commit point
//	templates/NAME/<id>.zip        the archive, written first
//
// A template is listed once its template.json is committed, which
// happens only after its archive is; Remove deletes template.json first
// (the template is gone for every node at once), then the archive. An
// interrupted Begin leaves at most an unlisted archive, which the next
// Begin of that name deletes. While a node makes or removes NAME it holds
// NAME in Names (the cluster's reservations), so two nodes never make
// one name at once.

// sharedPrefix is where templates live in a backend.
const sharedPrefix = "templates/"

// metaTimeout bounds one metadata call (stat, list, small reads,
// deletes): a replicated store electing a new leader may leave a request
// unanswered, and the user should hear about it soon.
const metaTimeout = 15 * time.Second

// NewSharedStore returns the store of templates in backend b. localDir is
// this node's own directory (the image cache of clones); names, if not
// nil, reserves names cluster-wide; node is this node's name, recorded in
// the templates it makes.
func NewSharedStore(localDir string, b storage.Backend, names Names, node string) *Store {
	return &Store{root: localDir, backend: b, names: names, node: node, busy: map[string]bool{}}
}

func metaKey(name string) string { return sharedPrefix + name + "/template.json" }

// reserve holds name against other makers and removers: in this process,
// and in the cluster when the store has Names. Release may be called more
// than once.
func (s *Store) reserve(ctx context.Context, name string) (func(), error) {
	release, err := s.reserveOnce(ctx, name)
	if err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(release) }, nil
}

func (s *Store) reserveOnce(ctx context.Context, name string) (func(), error) {
	s.mu.Lock()
	if s.busy[name] {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: template %s is being made or removed on this node", ErrBusy, name)
	}
	s.busy[name] = true
	s.mu.Unlock()
	local := func() {
		s.mu.Lock()
		delete(s.busy, name)
		s.mu.Unlock()
	}
	if s.names == nil {
		return local, nil
	}
	release, err := s.names.Reserve(ctx, name)
	if err != nil {
		local()
		return nil, err
	}
	return func() { release(); local() }, nil
}

// wrap names the backend in a storage failure about template name.
func (s *Store) wrap(name, what string, err error) error {
	var se *storage.Error
	if errors.As(err, &se) {
		return fmt.Errorf("template %s: %s: %w", name, what, err) // names the backend already
	}
	return fmt.Errorf("template %s: %s in %s: %w", name, what, s.backend.Name(), err)
}

func (s *Store) beginShared(ctx context.Context, name string) (*Draft, error) {
	release, err := s.reserve(ctx, name)
	if err != nil {
		if errors.Is(err, ErrBusy) {
			return nil, fmt.Errorf("%w: %s (%v)", ErrExists, name, err)
		}
		return nil, err
	}
	mctx, cancel := context.WithTimeout(ctx, metaTimeout)
	defer cancel()
	_, err = s.backend.Stat(mctx, metaKey(name))
	switch {
	case err == nil:
		release()
		return nil, fmt.Errorf("%w: %s in %s (remove it first: cedana template rm %s)", ErrExists, name, s.backend.Name(), name)
	case !errors.Is(err, storage.ErrNotExist):
		release()
		return nil, s.wrap(name, "check the name", err)
	}
	// Leftovers of an interrupted Begin of this name: unlisted, ours now.
	if old, err := s.backend.List(mctx, sharedPrefix+name+"/"); err == nil {
		for _, o := range old {
			_ = s.backend.Delete(mctx, o.Key)
		}
	}
	id := newID()
	return &Draft{Name: name, ID: id, Key: sharedPrefix + name + "/" + id + ".zip", release: release}, nil
}

func (s *Store) commitShared(ctx context.Context, d *Draft, t *Template) error {
	defer d.release()
	t.Key, t.Node = d.Key, s.node
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return err
	}
	mctx, cancel := context.WithTimeout(ctx, metaTimeout)
	defer cancel()
	if err := storage.Put(mctx, s.backend, metaKey(d.Name), bytes.NewReader(b)); err != nil {
		return s.wrap(d.Name, "write its metadata", err)
	}
	t.Location = storage.Location(s.backend, t.Key)
	return nil
}

func (s *Store) abortShared(d *Draft) {
	ctx, cancel := context.WithTimeout(context.Background(), metaTimeout)
	defer cancel()
	_ = s.backend.Delete(ctx, d.Key)
	if d.release != nil {
		d.release()
	}
}

func (s *Store) getShared(ctx context.Context, name string) (*Template, error) {
	mctx, cancel := context.WithTimeout(ctx, metaTimeout)
	defer cancel()
	b, err := storage.ReadAll(mctx, s.backend, metaKey(name))
	if errors.Is(err, storage.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s in %s (see cedana template ls)", ErrNotFound, name, s.backend.Name())
	}
	if err != nil {
		return nil, s.wrap(name, "read its metadata", err)
	}
	var t Template
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("template %s: bad metadata in %s: %w: %w", name, s.backend.Name(), err, archive.ErrCorrupt)
	}
	if t.Key == "" || storage.CheckKey(t.Key) != nil || !strings.HasPrefix(t.Key, sharedPrefix+name+"/") || t.Digest == "" {
		return nil, fmt.Errorf("template %s: bad metadata in %s (archive key %q, digest %q): %w", name, s.backend.Name(), t.Key, t.Digest, archive.ErrCorrupt)
	}
	t.Name = name
	t.Location = storage.Location(s.backend, t.Key)
	return &t, nil
}

func (s *Store) listShared(ctx context.Context) ([]*Template, error) {
	mctx, cancel := context.WithTimeout(ctx, metaTimeout)
	defer cancel()
	objs, err := s.backend.List(mctx, sharedPrefix)
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	var out []*Template
	for _, o := range objs {
		rest, ok := strings.CutPrefix(o.Key, sharedPrefix)
		name, file, _ := strings.Cut(rest, "/")
		if !ok || file != "template.json" || ValidName(name) != nil {
			continue
		}
		t, err := s.getShared(ctx, name)
		if errors.Is(err, ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Name < out[k].Name })
	return out, nil
}

func (s *Store) removeShared(ctx context.Context, name string) error {
	release, err := s.reserve(ctx, name)
	if err != nil {
		return err
	}
	defer release()
	t, err := s.getShared(ctx, name)
	if errors.Is(err, archive.ErrCorrupt) {
		t = nil // bad metadata: remove what is there all the same
	} else if err != nil {
		return err
	}
	mctx, cancel := context.WithTimeout(ctx, metaTimeout)
	defer cancel()
	// The metadata first: from now on no node lists or clones it.
	if err := s.backend.Delete(mctx, metaKey(name)); err != nil {
		return s.wrap(name, "remove", err)
	}
	if t != nil {
		if err := s.backend.Delete(mctx, t.Key); err != nil {
			return s.wrap(name, "remove its archive", err)
		}
	}
	if rest, err := s.backend.List(mctx, sharedPrefix+name+"/"); err == nil {
		for _, o := range rest {
			_ = s.backend.Delete(mctx, o.Key)
		}
	}
	return nil
}

// openShared opens a shared template's archive where it lives: a file on
// a shared mount directly (mmap, splice), an object through a
// storage.ReadCache (ranged reads into memory; nothing is written to
// disk).
func (s *Store) openShared(ctx context.Context, t *Template) (*archive.Reader, error) {
	obj, err := s.backend.Open(ctx, t.Key)
	if errors.Is(err, storage.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s: its archive %s is gone (removed meanwhile?)", ErrNotFound, t.Name, t.Location)
	}
	if err != nil {
		return nil, s.wrap(t.Name, "open its archive", err)
	}
	var src io.ReaderAt = storage.NewReadCache(obj)
	if f, ok := obj.(interface{ File() *os.File }); ok {
		src = f.File() // closing it closes obj
	}
	r, err := archive.OpenReaderAt(t.Location, src, obj.Size(), archive.DefaultLimits())
	if err != nil {
		obj.Close()
		return nil, fmt.Errorf("template %s: %w", t.Name, err)
	}
	return r, nil
}
