package storage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestEncryptedDirStreamMapped: a stream of an encrypted object in a
// directory opens its chunks straight from a mapping of the file (no copy
// of the ciphertext), with the same checks as the copying path: exact
// bytes at any offset, a flipped byte refused; and the file truncated
// under the mapping is an ErrCorrupt error, not a crash (SIGBUS).
func TestEncryptedDirStreamMapped(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d, err := NewDir("dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	_, key := testKey(t)
	e, err := NewEncrypted(d, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetChunkSize(64 << 10); err != nil {
		t.Fatal(err)
	}
	data := randBytes(8<<20+777, 3)
	if err := Put(ctx, e, "m/obj", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	stream := func(off, n int64) (*decStream, io.ReadCloser) {
		t.Helper()
		obj, err := e.Open(ctx, "m/obj")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { obj.Close() })
		r, err := obj.Stream(off, n)
		if err != nil {
			t.Fatal(err)
		}
		s, ok := r.(*decStream)
		if !ok || s.mapping == nil {
			t.Fatalf("the stream of a file object is %T, not mapped", r)
		}
		return s, r
	}
	for _, rg := range [][2]int64{{0, -1}, {1, 100}, {64<<10 - 3, 200 << 10}, {int64(len(data)) - 5, 5}, {5 << 20, 3<<20 + 777}} {
		_, r := stream(rg[0], rg[1])
		got, err := io.ReadAll(r)
		r.Close()
		end := int64(len(data))
		if rg[1] >= 0 {
			end = rg[0] + rg[1]
		}
		if err != nil || !bytes.Equal(got, data[rg[0]:end]) {
			t.Fatalf("range %v: %d bytes, %v", rg, len(got), err)
		}
	}

	path := filepath.Join(dir, "m", "obj")
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(orig)
	bad[len(bad)/2] ^= 1
	if err := os.WriteFile(path, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	_, r := stream(0, -1)
	if _, err := io.Copy(io.Discard, r); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("flipped byte: %v, want ErrCorrupt", err)
	}
	r.Close()

	if err := os.WriteFile(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	_, r = stream(0, -1)
	if _, err := io.ReadFull(r, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	// Truncated under the mapping (the last chunk was checked by Open).
	if err := os.Truncate(path, int64(len(orig)/4)); err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, r)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("file truncated while streaming: %v, want ErrCorrupt", err)
	}
	r.Close()
}

// ReadCache is what a restore hands the archive reader; its StreamRange
// makes streamed entries one pass (archive.SequentialSource, which this
// package cannot name without importing the archive package).
var _ interface {
	StreamRange(off, n int64) (io.ReadCloser, error)
} = (*ReadCache)(nil)

// TestReadCacheStreamRange: StreamRange reads exactly the range, past the
// cache (nothing kept), and counts what it fetched.
func TestReadCacheStreamRange(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	data := randBytes(5<<20+3, 4)
	if err := Put(ctx, m, "o", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	obj, err := m.Open(ctx, "o")
	if err != nil {
		t.Fatal(err)
	}
	c := NewReadCache(obj)
	defer c.Close()
	r, err := c.StreamRange(1<<20+1, 3<<20)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, data[1<<20+1:4<<20+1]) {
		t.Fatalf("StreamRange: %d bytes, %v", len(got), err)
	}
	if c.Fetched() != 3<<20 || len(c.blocks) != 0 {
		t.Fatalf("fetched %d, %d blocks cached; want 3 MiB, none", c.Fetched(), len(c.blocks))
	}
}
