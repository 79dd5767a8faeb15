// Package chunks stores checkpoint data as content-addressed chunks in a
// storage.Backend, so that successive checkpoints of one job store the
// bytes they share once (issue 15; design in docs/periodic.md, "Storing
// only what changed").
//
// A chunk is stored under its SHA-256, chunks/sha256/<2 hex>/<64 hex>,
// written only when missing (Stat, then Create). A checkpoint is a
// Manifest, written last under manifests/<checkpoint ID>.json, that lists
// the chunks of each of its images: the manifest is the commit point, and
// the manifests are the only reference counts. Deleting a checkpoint
// deletes its manifest; Collect then removes the chunks no remaining
// manifest names, sparing young ones (a checkpoint being written has
// chunks but no manifest yet). Deleting checkpoints in any order therefore
// never breaks another.
//
// Not wired into dump and restore yet: this package is the storage layer
// the design starts from.
package chunks

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/cedana/cedana/internal/storage"
)

// Key prefixes.
const (
	chunkPrefix    = "chunks/sha256/"
	manifestPrefix = "manifests/"
)

// ManifestVersion is the version of the Manifest schema.
const ManifestVersion = 1

// ErrCorrupt means a chunk's bytes do not match its digest or size.
var ErrCorrupt = errors.New("chunk is corrupt")

// Ref names a chunk: its SHA-256 (hex) and length.
type Ref struct {
	Digest string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Key is the chunk's object key.
func (r Ref) Key() string { return chunkPrefix + r.Digest[:2] + "/" + r.Digest }

// valid reports whether the digest is 64 lowercase hex digits.
func (r Ref) valid() bool {
	if len(r.Digest) != 64 || r.Size < 0 {
		return false
	}
	_, err := hex.DecodeString(r.Digest)
	return err == nil && strings.ToLower(r.Digest) == r.Digest
}

// Image is one image of a checkpoint as the concatenation of its chunks.
type Image struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Chunks []Ref  `json:"chunks"`
}

// Manifest is a deduplicated checkpoint.
type Manifest struct {
	Version    int       `json:"version"`
	Checkpoint string    `json:"checkpoint"`
	Created    time.Time `json:"created"`
	Images     []Image   `json:"images"`
}

// Store reads and writes chunks and manifests in a backend.
type Store struct {
	b storage.Backend
}

// New returns a Store over b.
func New(b storage.Backend) *Store { return &Store{b: b} }

// PutStats says what a write stored.
type PutStats struct {
	Chunks, NewChunks int   // chunks referenced; those written because missing
	Bytes, NewBytes   int64 // their bytes
}

// Put stores data as one chunk unless the backend has it already.
func (s *Store) Put(ctx context.Context, data []byte) (Ref, bool, error) {
	sum := sha256.Sum256(data)
	ref := Ref{Digest: hex.EncodeToString(sum[:]), Size: int64(len(data))}
	if _, err := s.b.Stat(ctx, ref.Key()); err == nil {
		return ref, false, nil
	} else if !errors.Is(err, storage.ErrNotExist) {
		return Ref{}, false, fmt.Errorf("chunk %s: %w", ref.Key(), err)
	}
	w, err := s.b.Create(ctx, ref.Key())
	if err != nil {
		return Ref{}, false, fmt.Errorf("chunk %s: %w", ref.Key(), err)
	}
	if _, err := w.Write(data); err != nil {
		_ = w.Abort()
		return Ref{}, false, fmt.Errorf("chunk %s: %w", ref.Key(), err)
	}
	if err := w.Commit(); err != nil {
		return Ref{}, false, fmt.Errorf("chunk %s: %w", ref.Key(), err)
	}
	return ref, true, nil
}

// PutImage cuts r into chunks of chunkSize bytes (the last may be
// shorter) and stores those the backend lacks.
func (s *Store) PutImage(ctx context.Context, name string, r io.Reader, chunkSize int, st *PutStats) (Image, error) {
	if chunkSize <= 0 {
		return Image{}, fmt.Errorf("chunk size must be positive, not %d", chunkSize)
	}
	img := Image{Name: name}
	buf := make([]byte, chunkSize)
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			ref, isNew, perr := s.Put(ctx, buf[:n])
			if perr != nil {
				return Image{}, fmt.Errorf("image %s: %w", name, perr)
			}
			img.Chunks = append(img.Chunks, ref)
			img.Size += int64(n)
			if st != nil {
				st.Chunks++
				st.Bytes += int64(n)
				if isNew {
					st.NewChunks++
					st.NewBytes += int64(n)
				}
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return img, nil
		}
		if err != nil {
			return Image{}, fmt.Errorf("read image %s: %w", name, err)
		}
	}
}

// manifestKey is where a checkpoint's manifest lives.
func manifestKey(checkpoint string) string { return manifestPrefix + checkpoint + ".json" }

// Commit writes the manifest, which makes the checkpoint exist. Every
// chunk it names must have been stored before.
func (s *Store) Commit(ctx context.Context, m *Manifest) error {
	if err := m.validate(); err != nil {
		return err
	}
	data, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	w, err := s.b.Create(ctx, manifestKey(m.Checkpoint))
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", m.Checkpoint, err)
	}
	if _, err := w.Write(data); err != nil {
		_ = w.Abort()
		return fmt.Errorf("checkpoint %s: %w", m.Checkpoint, err)
	}
	if err := w.Commit(); err != nil {
		return fmt.Errorf("checkpoint %s: %w", m.Checkpoint, err)
	}
	return nil
}

// validate checks a manifest read from storage or about to be written.
func (m *Manifest) validate() error {
	if m.Version != ManifestVersion {
		return fmt.Errorf("%w: manifest version %d, want %d", ErrCorrupt, m.Version, ManifestVersion)
	}
	if m.Checkpoint == "" || strings.ContainsAny(m.Checkpoint, "/\\") || strings.HasPrefix(m.Checkpoint, ".") {
		return fmt.Errorf("%w: bad checkpoint name %q in manifest", ErrCorrupt, m.Checkpoint)
	}
	for _, img := range m.Images {
		var total int64
		for _, c := range img.Chunks {
			if !c.valid() {
				return fmt.Errorf("%w: checkpoint %s, image %s: bad chunk reference %+v", ErrCorrupt, m.Checkpoint, img.Name, c)
			}
			total += c.Size
		}
		if total != img.Size {
			return fmt.Errorf("%w: checkpoint %s, image %s: chunks hold %d bytes, image is %d", ErrCorrupt, m.Checkpoint, img.Name, total, img.Size)
		}
	}
	return nil
}

// Manifest reads and validates a checkpoint's manifest.
func (s *Store) Manifest(ctx context.Context, checkpoint string) (*Manifest, error) {
	data, err := s.readAll(ctx, manifestKey(checkpoint))
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", checkpoint, err)
	}
	return parseManifest(data, checkpoint)
}

// parseManifest decodes and validates the manifest of checkpoint (bytes
// read from storage: untrusted).
func parseManifest(data []byte, checkpoint string) (*Manifest, error) {
	m := new(Manifest)
	if err := json.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("%w: checkpoint %s: manifest: %v", ErrCorrupt, checkpoint, err)
	}
	if m.Checkpoint != checkpoint {
		return nil, fmt.Errorf("%w: manifest of %s names checkpoint %q", ErrCorrupt, checkpoint, m.Checkpoint)
	}
	return m, m.validate()
}

// Get reads a chunk and checks its size and SHA-256.
func (s *Store) Get(ctx context.Context, ref Ref) ([]byte, error) {
	if !ref.valid() {
		return nil, fmt.Errorf("%w: bad chunk reference %+v", ErrCorrupt, ref)
	}
	data, err := s.readAll(ctx, ref.Key())
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", ref.Key(), err)
	}
	sum := sha256.Sum256(data)
	if int64(len(data)) != ref.Size || hex.EncodeToString(sum[:]) != ref.Digest {
		return nil, fmt.Errorf("%w: %s holds %d bytes with SHA-256 %x, want %d bytes with %s",
			ErrCorrupt, ref.Key(), len(data), sum, ref.Size, ref.Digest)
	}
	return data, nil
}

// WriteImage writes an image of checkpoint to w, verifying every chunk;
// a corrupt chunk fails it with an error naming the checkpoint, the image
// and the chunk.
func (s *Store) WriteImage(ctx context.Context, checkpoint string, img Image, w io.Writer) error {
	for i, c := range img.Chunks {
		data, err := s.Get(ctx, c)
		if err != nil {
			return fmt.Errorf("checkpoint %s, image %s, chunk %d of %d: %w", checkpoint, img.Name, i+1, len(img.Chunks), err)
		}
		if _, err := w.Write(data); err != nil {
			return fmt.Errorf("checkpoint %s, image %s: %w", checkpoint, img.Name, err)
		}
	}
	return nil
}

// Delete removes a checkpoint's manifest; its chunks go at the next
// Collect unless another manifest names them.
func (s *Store) Delete(ctx context.Context, checkpoint string) error {
	return s.b.Delete(ctx, manifestKey(checkpoint))
}

// Collect deletes the chunks no manifest names that were stored more than
// grace before now (younger ones may belong to a checkpoint being
// written), and returns how many it deleted. A manifest it cannot read
// stops it: deleting what only that manifest names would break it.
func (s *Store) Collect(ctx context.Context, grace time.Duration, now time.Time) (int, error) {
	mans, err := s.b.List(ctx, manifestPrefix)
	if err != nil {
		return 0, err
	}
	live := map[string]bool{}
	for _, mi := range mans {
		name := strings.TrimSuffix(strings.TrimPrefix(mi.Key, manifestPrefix), ".json")
		m, err := s.Manifest(ctx, name)
		if err != nil {
			return 0, fmt.Errorf("collect: %w", err)
		}
		for _, img := range m.Images {
			for _, c := range img.Chunks {
				live[c.Key()] = true
			}
		}
	}
	chunks, err := s.b.List(ctx, chunkPrefix)
	if err != nil {
		return 0, err
	}
	deleted := 0
	for _, c := range chunks {
		if live[c.Key] || now.Sub(c.ModTime) < grace {
			continue
		}
		if err := s.b.Delete(ctx, c.Key); err != nil {
			return deleted, err
		}
		deleted++
	}
	return deleted, nil
}

// Export writes the images of a checkpoint one after the other to open,
// verified, e.g. into a self-contained archive.
func (s *Store) Export(ctx context.Context, checkpoint string, open func(name string, size int64) (io.Writer, error)) error {
	m, err := s.Manifest(ctx, checkpoint)
	if err != nil {
		return err
	}
	for _, img := range m.Images {
		w, err := open(img.Name, img.Size)
		if err != nil {
			return err
		}
		if err := s.WriteImage(ctx, checkpoint, img, w); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) readAll(ctx context.Context, key string) ([]byte, error) {
	obj, err := s.b.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	var buf bytes.Buffer
	r, err := obj.Stream(0, -1)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if _, err := io.Copy(&buf, r); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
