package chunks

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/storage"
)

// countingBackend counts the objects opened for reading.
type countingBackend struct {
	storage.Backend
	opens atomic.Int64
}

func (b *countingBackend) Open(ctx context.Context, key string) (storage.Object, error) {
	b.opens.Add(1)
	return b.Backend.Open(ctx, key)
}

// TestCollectReadsManifestsOnlyWhenNeeded: a collection reads no manifest
// while no chunk is old enough to go, reads each checkpoint's manifest
// once while the object stays the same, and reads a replaced object
// again — and in every case deletes exactly the chunks nothing names.
func TestCollectReadsManifestsOnlyWhenNeeded(t *testing.T) {
	ctx := context.Background()
	cb := &countingBackend{Backend: storage.NewMemory()}
	d := New(cb)
	pages := map[string][]byte{}
	for i, k := range []string{"jobs/j/a.zip", "jobs/j/b.zip", "jobs/j/c.zip"} {
		pages[k] = memory(3<<20, uint64(10+i))
		if st := writeArchive(t, d, k, pages[k]); st.Chunks == 0 {
			t.Fatalf("%s stored no chunk: the test needs some", k)
		}
	}
	collect := func(now time.Time) (deleted, opened int) {
		t.Helper()
		before := cb.opens.Load()
		n, err := d.Collect(ctx, "jobs/j/x", now)
		if err != nil {
			t.Fatal(err)
		}
		return n, int(cb.opens.Load() - before)
	}
	if n, opened := collect(time.Now()); n != 0 || opened != 0 {
		t.Fatalf("young chunks only: deleted %d, read %d manifests; want 0, 0", n, opened)
	}
	later := time.Now().Add(2 * d.Grace)
	if n, opened := collect(later); n != 0 || opened != 3 {
		t.Fatalf("first collection: deleted %d, read %d manifests; want 0, 3", n, opened)
	}
	if n, opened := collect(later); n != 0 || opened != 0 {
		t.Fatalf("nothing changed: deleted %d, read %d manifests; want 0, 0 (cached)", n, opened)
	}
	// b replaced by other content under the same key (and size): its old
	// chunks are no longer named by anything.
	pages["jobs/j/b.zip"] = memory(3<<20, 99)
	time.Sleep(time.Millisecond) // a later modification time
	writeArchive(t, d, "jobs/j/b.zip", pages["jobs/j/b.zip"])
	n, opened := collect(later)
	if opened != 1 || n == 0 {
		t.Fatalf("after replacing b: deleted %d, read %d manifests; want > 0, 1", n, opened)
	}
	for k, want := range pages {
		got, err := readPages(d, k)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s after collection: %v", k, err)
		}
	}
	// A deleted checkpoint's chunks go at the next collection.
	if err := d.Delete(ctx, "jobs/j/c.zip"); err != nil {
		t.Fatal(err)
	}
	if n, opened := collect(later); n == 0 || opened != 0 {
		t.Fatalf("after deleting c: deleted %d, read %d manifests; want > 0, 0", n, opened)
	}
	for _, k := range []string{"jobs/j/a.zip", "jobs/j/b.zip"} {
		if got, err := readPages(d, k); err != nil || !bytes.Equal(got, pages[k]) {
			t.Fatalf("%s after deleting c: %v", k, err)
		}
	}
}
