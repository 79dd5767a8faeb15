// Package template keeps warm templates — checkpoints kept to start many
// copies (clones) of a slow-starting service from — and what cloning
// needs around the engine: the safety checks that refuse state a clone
// cannot share (safety.go), a network namespace with a reachable address
// per clone (netns.go), readiness probes (probe.go) and a node-local cache
// of a template's verified, unpacked images that every clone restores
// from (cache.go).
//
// A template is a directory NAME/ under the store's root holding the
// archive (archive.zip, the format of internal/archive) and its metadata
// (template.json, see Template). The store is reached only through Store's
// methods, so that it can later sit on a storage backend
// (internal/storage) and be shared by a cluster.
package template

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
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
	// Archive is the path of the archive (filled in by the store).
	Archive string `json:"-"`
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

// Store holds templates in a directory. It is safe for concurrent use by
// one process (creations of one name race on the directory, and one wins).
type Store struct {
	root string
}

// NewStore returns the store rooted at dir (created when first written).
// It is the one place that decides where templates live; a storage
// backend (internal/storage) would plug in here.
func NewStore(dir string) *Store { return &Store{root: dir} }

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

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

// Begin reserves name and returns the path the archive must be written
// to; Commit makes the template visible, Abort frees the name.
func (s *Store) Begin(name string) (archivePath string, err error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	if err := os.MkdirAll(s.root, 0o700); err != nil {
		return "", fmt.Errorf("create template store: %w", err)
	}
	if err := os.Mkdir(s.dir(name), 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("%w: %s (remove it first: cedana template rm %s)", ErrExists, name, name)
		}
		return "", fmt.Errorf("create template %s: %w", name, err)
	}
	return filepath.Join(s.dir(name), "archive.zip"), nil
}

// Commit writes t's metadata, which makes the template listed.
func (s *Store) Commit(t *Template) error {
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
	return nil
}

// Abort removes a template that was begun but not committed.
func (s *Store) Abort(name string) { _ = os.RemoveAll(s.dir(name)) }

// Get returns a committed template.
func (s *Store) Get(name string) (*Template, error) {
	if err := ValidName(name); err != nil {
		return nil, err
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
	return &t, nil
}

// List returns every committed template, by name.
func (s *Store) List() ([]*Template, error) {
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
		if t, err := s.Get(e.Name()); err == nil {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Name < out[k].Name })
	return out, nil
}

// Remove deletes a template and its archive. Running clones are not
// affected: they restore from the node's image cache, dropped here too.
func (s *Store) Remove(name string) error {
	if _, err := s.Get(name); err != nil {
		return err
	}
	// Rename first, so that the name is free (and unlisted) at once.
	gone := filepath.Join(s.root, fmt.Sprintf(".rm-%s-%d", name, time.Now().UnixNano()))
	if err := os.Rename(s.dir(name), gone); err != nil {
		return fmt.Errorf("remove template %s: %w", name, err)
	}
	return os.RemoveAll(gone)
}
