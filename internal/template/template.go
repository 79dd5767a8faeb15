// Package template keeps warm templates — checkpoints kept to start many
// copies (clones) of a slow-starting service from — and what cloning
// needs around the engine: the safety checks that refuse state a clone
// cannot share (safety.go), a network namespace with a reachable address
// per clone (netns.go), readiness probes (probe.go) and a node-local cache
// of a template's verified, unpacked images that every clone restores
// from (cache.go).
//
// Templates live in one of two places, behind the same Store methods:
//
//   - locally (NewStore): a directory NAME/ under the store's root holding
//     the archive (archive.zip, the format of internal/archive) and its
//     metadata (template.json, see Template);
//   - in a storage backend (NewSharedStore, shared.go): the objects
//     templates/NAME/<id>.zip and templates/NAME/template.json, so that
//     every node of a cluster lists the same templates and clones any of
//     them. Names are reserved cluster-wide (Names) while a template is
//     made or removed.
package template

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/storage"
)

// Errors callers branch on.
var (
	// ErrNotFound means no template has that name.
	ErrNotFound = errors.New("no such template")
	// ErrExists means a template with that name exists already.
	ErrExists = errors.New("template exists")
	// ErrUnsafe means the template holds state that clones cannot share
	// (an established connection, a file open for writing, a binary
	// changed on disk); the message says which.
	ErrUnsafe = errors.New("cannot clone safely")
	// ErrInvalid is a request that can never succeed as given.
	ErrInvalid = errors.New("invalid template request")
	// ErrBusy means the template is being made, removed or cloned right
	// now; the request may succeed later.
	ErrBusy = errors.New("template busy")
)

// Template describes a stored template (template.json).
type Template struct {
	// Name is the template's unique name.
	Name string `json:"name"`
	// Created is when the checkpoint was taken.
	Created time.Time `json:"created"`
	// Source says where it came from: "job NAME", "PID N" or "file PATH".
	Source string `json:"source"`
	// Kind is "process" or "runc".
	Kind string `json:"kind"`
	// Size is the archive's size in bytes.
	Size int64 `json:"size"`
	// RSS is the source's resident memory when the template was made
	// (0 if unknown).
	RSS int64 `json:"rss,omitempty"`
	// Processes is the number of processes in the tree.
	Processes int `json:"processes"`
	// Listen are the TCP ports the tree listened on: clones then get a
	// network namespace of their own.
	Listen []int `json:"listen,omitempty"`
	// Outputs are the regular files the tree wrote its stdout/stderr to
	// (descriptors 1 and 2): every clone gets its own log in their place.
	Outputs []string `json:"outputs,omitempty"`
	// Executables identify every file the tree had mapped executable
	// (the programs and their libraries), to refuse a clone once one
	// changed on disk.
	Executables []FileID `json:"executables,omitempty"`
	// ID is unique to this making of the template: a name removed and
	// made again gets a new one (and a new archive key).
	ID string `json:"id,omitempty"`
	// Digest identifies the archive's content (ContentDigest of its
	// manifest). A clone refuses an archive whose manifest does not
	// match it, and the image cache of a shared template is keyed by it.
	Digest string `json:"digest,omitempty"`
	// Node is the cluster node that made the template ("" outside a
	// cluster).
	Node string `json:"node,omitempty"`
	// Key is the archive's key in the storage backend (shared templates
	// only).
	Key string `json:"key,omitempty"`
	// Archive is the path of a local template's archive (filled in by
	// the store).
	Archive string `json:"-"`
	// Location says where the archive lives: its path, or its
	// storage.Location (filled in by the store).
	Location string `json:"-"`
}

// FileID identifies a file's content cheaply: a binary replaced or
// rewritten changes at least one of these.
type FileID struct {
	Path    string `json:"path"`
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	Size    int64  `json:"size"`
	MtimeNs int64  `json:"mtime_ns"`
}

// ContentDigest identifies an archive's content: the SHA-256 over the
// name, size and stored digest of every entry its manifest lists. Two
// archives with the same digest hold the same images; a manifest that
// verified its entries thus vouches for the whole archive.
func ContentDigest(m *archive.Manifest) string {
	h := sha256.New()
	for _, e := range m.Entries {
		fmt.Fprintf(h, "%s\x00%d\x00%s\x00%s\n", e.Name, e.Size, e.Digest(), e.StoredXXH3)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Names reserves template names across a cluster while one node makes or
// removes a template, so that two nodes never make the same name at once.
// Reserve fails with an error wrapping ErrBusy when another holder has
// the name; release frees it.
type Names interface {
	Reserve(ctx context.Context, name string) (release func(), err error)
}

// Store holds templates: in a local directory (NewStore) or in a storage
// backend shared by a cluster (NewSharedStore). It is safe for concurrent
// use.
type Store struct {
	root string // local templates; for a shared store, this node's image cache

	backend storage.Backend // nil: templates live under root
	names   Names           // cluster-wide name reservations (shared; may be nil)
	node    string          // this node's name, recorded in templates it makes

	mu   sync.Mutex
	busy map[string]bool // names this process is making or removing (shared)
}

// NewStore returns the local store rooted at dir (created when first
// written).
func NewStore(dir string) *Store { return &Store{root: dir} }

// Root is the store's local directory: the templates of a local store,
// the node-local image cache of a shared one.
func (s *Store) Root() string { return s.root }

// Shared reports whether templates live in a storage backend.
func (s *Store) Shared() bool { return s.backend != nil }

// Backend is the storage backend of a shared store (nil when local).
func (s *Store) Backend() storage.Backend { return s.backend }

// Where describes where templates live, for messages.
func (s *Store) Where() string {
	if s.backend != nil {
		return s.backend.Name()
	}
	return s.root
}

// ValidName accepts names usable on a command line and as a file name.
func ValidName(name string) error {
	if name == "" || len(name) > 128 {
		return fmt.Errorf("%w: a template name needs 1 to 128 characters", ErrInvalid)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') || name[0] == '.' {
			return fmt.Errorf("%w: template name %q: use letters, digits, '-', '_' and '.' (not first)", ErrInvalid, name)
		}
	}
	return nil
}

func (s *Store) dir(name string) string { return filepath.Join(s.root, name) }

// Draft is a template being made: where its archive must be written
// (Path for a local store, Key in Backend for a shared one). Commit
// makes it visible, Abort frees the name.
type Draft struct {
	Name string
	ID   string
	Path string
	Key  string

	release func()
}

// newID is a random template ID.
func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Begin reserves name and returns where the archive must be written;
// Commit makes the template visible, Abort frees the name. A name that
// exists (or is being made elsewhere) is refused with ErrExists.
func (s *Store) Begin(ctx context.Context, name string) (*Draft, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if s.backend != nil {
		return s.beginShared(ctx, name)
	}
	if err := os.MkdirAll(s.root, 0o700); err != nil {
		return nil, fmt.Errorf("create template store: %w", err)
	}
	if err := os.Mkdir(s.dir(name), 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%w: %s (remove it first: cedana template rm %s)", ErrExists, name, name)
		}
		return nil, fmt.Errorf("create template %s: %w", name, err)
	}
	return &Draft{Name: name, ID: newID(), Path: filepath.Join(s.dir(name), "archive.zip")}, nil
}

// Commit writes t's metadata, which makes the template listed. t.Name
// must be the draft's.
func (s *Store) Commit(ctx context.Context, d *Draft, t *Template) error {
	t.Name, t.ID = d.Name, d.ID
	if s.backend != nil {
		return s.commitShared(ctx, d, t)
	}
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(s.dir(t.Name), ".template.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write template %s: %w", t.Name, err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir(t.Name), "template.json")); err != nil {
		return fmt.Errorf("write template %s: %w", t.Name, err)
	}
	t.Archive, t.Location = d.Path, d.Path
	return nil
}

// Abort removes a template that was begun but not committed.
func (s *Store) Abort(d *Draft) {
	if s.backend != nil {
		s.abortShared(d)
		return
	}
	_ = os.RemoveAll(s.dir(d.Name))
}

// Get returns a committed template.
func (s *Store) Get(ctx context.Context, name string) (*Template, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if s.backend != nil {
		return s.getShared(ctx, name)
	}
	b, err := os.ReadFile(filepath.Join(s.dir(name), "template.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s (see cedana template ls)", ErrNotFound, name)
	}
	if err != nil {
		return nil, fmt.Errorf("read template %s: %w", name, err)
	}
	var t Template
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("template %s: bad metadata: %w", name, err)
	}
	t.Name = name
	t.Archive = filepath.Join(s.dir(name), "archive.zip")
	t.Location = t.Archive
	return &t, nil
}

// List returns every committed template, by name.
func (s *Store) List(ctx context.Context) ([]*Template, error) {
	if s.backend != nil {
		return s.listShared(ctx)
	}
	ents, err := os.ReadDir(s.root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	var out []*Template
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if t, err := s.Get(ctx, e.Name()); err == nil {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Name < out[k].Name })
	return out, nil
}

// Remove deletes a template and its archive. Running clones are not
// affected; the caller makes sure no clone is being started from it on
// this node (their images would go with a local template's directory).
func (s *Store) Remove(ctx context.Context, name string) error {
	if s.backend != nil {
		return s.removeShared(ctx, name)
	}
	if _, err := s.Get(ctx, name); err != nil {
		return err
	}
	// Rename first, so that the name is free (and unlisted) at once.
	gone := filepath.Join(s.root, fmt.Sprintf(".rm-%s-%d", name, time.Now().UnixNano()))
	if err := os.Rename(s.dir(name), gone); err != nil {
		return fmt.Errorf("remove template %s: %w", name, err)
	}
	return os.RemoveAll(gone)
}

// OpenArchive opens t's archive for reading: the local file, or the
// object in the backend through a read cache (ranged reads into memory,
// no copy on disk). The manifest is checked against t.Digest when the
// template records one: an archive that was replaced or damaged is
// refused (archive.ErrCorrupt) before anything is read from it.
func (s *Store) OpenArchive(ctx context.Context, t *Template) (*archive.Reader, error) {
	var (
		r   *archive.Reader
		err error
	)
	if s.backend == nil {
		if r, err = archive.Open(t.Archive, archive.DefaultLimits()); err != nil {
			return nil, fmt.Errorf("template %s: %w", t.Name, err)
		}
	} else if r, err = s.openShared(ctx, t); err != nil {
		return nil, err
	}
	if t.Digest != "" {
		if got := ContentDigest(r.Manifest); got != t.Digest {
			r.Close()
			return nil, fmt.Errorf("template %s: the archive at %s is not the one the template recorded (content digest %.12s…, want %.12s…): %w",
				t.Name, t.Location, got, t.Digest, archive.ErrCorrupt)
		}
	}
	return r, nil
}
