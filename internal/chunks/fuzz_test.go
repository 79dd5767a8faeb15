package chunks

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/cedana/cedana/internal/storage"
)

// FuzzParseManifest: a manifest read from storage is refused or valid, and
// stays valid through a JSON round trip.
func FuzzParseManifest(f *testing.F) {
	d := strings.Repeat("ab", 32)
	f.Add([]byte(`{"version":1,"size":70000,"skeleton":3,"skeleton_sha256":"` + d + `","chunks":[{"off":1,"xxh3":"` + d[:32] + `","sha256":"` + d + `","size":69997}]}`))
	f.Add([]byte(`{"version":1,"size":-1,"skeleton":0,"chunks":[{"off":0,"sha256":"` + d + `","size":-1}]}`))
	f.Add([]byte(`{"version":1,"size":10,"skeleton":10,"skeleton_sha256":"` + d + `","chunks":[{"off":9,"sha256":"` + d + `","size":9223372036854775807}]}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseManifest(data)
		if err != nil {
			return
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := parseManifest(again); err != nil {
			t.Fatalf("a valid manifest is refused after a round trip: %v", err)
		}
	})
}

// FuzzOpenObject: a checkpoint object read from storage (untrusted: the
// trailer, manifest and skeleton are fuzzed; the chunks it may name are
// stored) is refused with an error or reads back within its stated size,
// never panicking or reading outside what it names.
func FuzzOpenObject(f *testing.F) {
	mb := storage.NewMemory()
	d := New(mb)
	writeArchive(f, d, "j/seed.zip", memory(300<<10, 11))
	seed, err := readObject(mb, "j/seed.zip")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add(seed[len(seed)/2:])
	f.Add([]byte("CEDCHNK1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		w, _ := mb.Create(context.Background(), "j/x.zip")
		w.Write(data)
		w.Commit()
		obj, err := d.Open(context.Background(), "j/x.zip")
		if err != nil {
			return
		}
		defer obj.Close()
		if obj.Size() < 0 {
			t.Fatalf("negative size %d", obj.Size())
		}
		buf := make([]byte, min(obj.Size(), 1<<20))
		for off := int64(0); off < obj.Size(); off += int64(len(buf)) {
			if _, err := obj.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
				return
			}
		}
	})
}

// readObject returns the stored bytes of key.
func readObject(b storage.Backend, key string) ([]byte, error) {
	obj, err := b.Open(context.Background(), key)
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	return readAll(obj, 1<<30)
}
