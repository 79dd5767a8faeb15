// Package storage is where checkpoint archives live: one small interface, Backend, with a
// backend per kind of store in its own file — a local or shared directory (local.go), any
// S3-compatible object store (s3.go), a NATS JetStream object store (jetstream.go) — a
// memory fake for unit tests (memory.go), and encryption at rest as a wrapper that fits
// around any of them (encrypt.go).
//
// The archive code writes and reads streams and never learns where the bytes live:
//
//	w, err := b.Create(ctx, "jobs/redis/2026-12-05T08-00-00.000Z.zip")
//	... write the archive into w ...
//	err = w.Commit() // the object appears, complete, or not at all
//
//	obj, err := b.Open(ctx, key)
//	zr, err := zip.NewReader(obj, obj.Size()) // ranged reads where the backend has them
//
// Promises every backend keeps (the contract test suite checks them against real servers):
//
//   - An object becomes visible (Stat, Open, List) only when Commit returns nil. Abort, a
//     failed Commit, or a writer killed mid-way leave nothing that List reports.
//   - Open gives ranged reads (ReadAt) without fetching the whole object, and Stream reads
//     sequentially with one request where the backend allows it.
//   - Errors are *Error values naming the backend and, when known, the fix; callers branch
//     on the sentinels (ErrNotExist, ErrAccess, ErrNoBucket, ErrUnreachable, ErrNoSpace,
//     ErrWrongKey, ErrNoKey, ErrCorrupt, ErrEncrypted) with errors.Is.
//   - Delete is idempotent; multi-object layouts delete the object that makes them visible
//     first (the JetStream index), then the parts, so an interrupted delete never leaves a
//     listed but broken object.
//
// Keys are slash-separated relative names ("jobs/redis/ck1.zip"). Names whose last element
// starts with ".cedana-" are reserved for temporary and internal objects.
//
// Towards content-addressed checkpoints: a later format can write each chunk under its
// digest ("chunks/sha256/ab/abcdef…", Stat first, Create only when missing — identical
// chunks of later checkpoints of the same job are then stored once) and a small manifest
// listing them, written last with Create/Commit so it is the commit point. Retention then
// deletes manifests first and chunks no manifest references afterwards.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Backend is a store of immutable objects addressed by key.
type Backend interface {
	// Name describes the store for messages, e.g. "s3://bucket/prefix" or
	// "dir:/mnt/ckpt". It never contains credentials.
	Name() string
	// Create starts writing the object key. Nothing is visible until Commit succeeds;
	// an existing object of that name is replaced atomically at Commit.
	Create(ctx context.Context, key string) (Writer, error)
	// Open opens a committed object for reading. The context bounds every read made
	// through the returned Object.
	Open(ctx context.Context, key string) (Object, error)
	// Stat describes a committed object, or returns an error wrapping ErrNotExist.
	Stat(ctx context.Context, key string) (Info, error)
	// List returns the committed objects whose key starts with prefix, sorted by key.
	// In-progress, aborted or interrupted uploads are never listed.
	List(ctx context.Context, prefix string) ([]Info, error)
	// Delete removes an object; deleting a missing object is not an error.
	Delete(ctx context.Context, key string) error
}

// Writer receives an object's bytes. Exactly one of Commit or Abort must be called.
type Writer interface {
	io.Writer
	// Commit finishes the upload and makes the object visible atomically. When it
	// returns an error, nothing is visible (and the upload was aborted).
	Commit() error
	// Abort discards everything written; it leaves nothing behind that List reports.
	// Abort after Commit does nothing.
	Abort() error
}

// Object is an open committed object.
type Object interface {
	// ReadAt reads len(p) bytes at off (a ranged read on object stores).
	io.ReaderAt
	// Size is the object's length in bytes.
	Size() int64
	// Stream returns a sequential reader of n bytes from off (n < 0: to the end), fetched
	// with as few requests as the backend allows. Close it when done.
	Stream(off, n int64) (io.ReadCloser, error)
	// Close releases the object.
	Close() error
}

// Info describes a committed object.
type Info struct {
	Key     string    // the key given to Create
	Size    int64     // length in bytes (of the plaintext, for an encrypted backend)
	ModTime time.Time // when it was committed, as the store reports it
}

// Sentinel errors; *Error wraps one of them (or a lower-level cause) so callers can
// branch with errors.Is and map them to exit codes in one place.
var (
	// ErrNotExist: the object does not exist (or is not committed).
	ErrNotExist = errors.New("object does not exist")
	// ErrAccess: the store refused the credentials.
	ErrAccess = errors.New("access denied")
	// ErrNoBucket: the bucket, object store or directory does not exist.
	ErrNoBucket = errors.New("bucket does not exist")
	// ErrUnreachable: the store could not be reached.
	ErrUnreachable = errors.New("store unreachable")
	// ErrNoSpace: the store is full or over its quota.
	ErrNoSpace = errors.New("store is full")
	// ErrWrongKey: the encryption key does not open this object.
	ErrWrongKey = errors.New("wrong encryption key")
	// ErrNoKey: no usable encryption key was configured.
	ErrNoKey = errors.New("no encryption key")
	// ErrCorrupt: the object was modified, truncated or is not in the expected format.
	ErrCorrupt = errors.New("object is corrupt or was tampered with")
	// ErrEncrypted: the object is encrypted but no key was configured to read it.
	ErrEncrypted = errors.New("object is encrypted")
	// ErrInvalidKey: the object key is not a valid name.
	ErrInvalidKey = errors.New("invalid object key")
	// ErrClosed: the writer was already committed or aborted.
	ErrClosed = errors.New("writer already committed or aborted")
)

// Error is a failed storage operation.
type Error struct {
	Backend string // Backend.Name()
	Op      string // create, write, commit, open, read, stat, list, delete, connect
	Key     string // the object key, if any
	Err     error  // the cause; wraps a sentinel when one applies
	Hint    string // what the user can do about it, if known
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("storage ")
	b.WriteString(e.Backend)
	b.WriteString(": ")
	b.WriteString(e.Op)
	if e.Key != "" {
		b.WriteString(" ")
		b.WriteString(e.Key)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	if e.Hint != "" {
		b.WriteString(" (")
		b.WriteString(e.Hint)
		b.WriteString(")")
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// kindError is a sentinel plus the backend's own detail, so errors.Is sees the sentinel
// and the message keeps the detail.
type kindError struct {
	kind   error
	detail error
}

func (k *kindError) Error() string {
	if k.detail == nil {
		return k.kind.Error()
	}
	return k.kind.Error() + ": " + k.detail.Error()
}

func (k *kindError) Unwrap() []error {
	if k.detail == nil {
		return []error{k.kind}
	}
	return []error{k.kind, k.detail}
}

// withKind marks detail as being of kind (one of the sentinels).
func withKind(kind, detail error) error {
	if detail == nil || errors.Is(detail, kind) {
		if detail == nil {
			return kind
		}
		return detail
	}
	return &kindError{kind: kind, detail: detail}
}

// reservedPrefix starts the last element of temporary and internal object names.
const reservedPrefix = ".cedana-"

// CheckKey reports whether key is a valid object key: non-empty, relative,
// slash-separated, without empty, "." or ".." elements, and not reserved.
func CheckKey(key string) error {
	if key == "" || len(key) > 900 {
		return fmt.Errorf("%w %q: empty or longer than 900 bytes", ErrInvalidKey, key)
	}
	for _, el := range strings.Split(key, "/") {
		switch {
		case el == "" || el == "." || el == "..":
			return fmt.Errorf("%w %q: it must be a relative path without empty, . or .. elements", ErrInvalidKey, key)
		case strings.HasPrefix(el, reservedPrefix):
			return fmt.Errorf("%w %q: names starting with %q are reserved", ErrInvalidKey, key, reservedPrefix)
		case strings.ContainsAny(el, "\x00\\") || strings.ContainsFunc(el, func(r rune) bool { return r < 0x20 || r == 0x7f }):
			return fmt.Errorf("%w %q: control characters and backslashes are not allowed", ErrInvalidKey, key)
		}
	}
	return nil
}

// checkPrefix validates a List prefix: empty, or a key prefix without bad elements.
func checkPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	p := strings.TrimSuffix(prefix, "/")
	if p == "" {
		return fmt.Errorf("%w %q: a prefix cannot be only /", ErrInvalidKey, prefix)
	}
	// The last element may be partial ("jobs/re"), but the same rules apply to it.
	return CheckKey(p)
}

// ReadAll reads a whole object; for small objects (indexes, manifests) and tests.
func ReadAll(ctx context.Context, b Backend, key string) ([]byte, error) {
	obj, err := b.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	r, err := obj.Stream(0, -1)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// Put writes data under key and commits it.
func Put(ctx context.Context, b Backend, key string, data io.Reader) error {
	w, err := b.Create(ctx, key)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, data); err != nil {
		_ = w.Abort()
		return err
	}
	return w.Commit()
}

// sectionCloser turns an io.SectionReader into an io.ReadCloser.
type sectionCloser struct{ *io.SectionReader }

func (sectionCloser) Close() error { return nil }

// clampRange turns Stream's (off, n) into a valid [off, off+n) within size.
func clampRange(off, n, size int64) (int64, int64, error) {
	if off < 0 || off > size {
		return 0, 0, fmt.Errorf("offset %d outside the object (size %d)", off, size)
	}
	if n < 0 || off+n > size {
		n = size - off
	}
	return off, n, nil
}
