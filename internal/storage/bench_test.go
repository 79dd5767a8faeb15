package storage

import (
	"bytes"
	"context"
	"io"
	"testing"
)

// discard is a Backend whose writers throw bytes away: it isolates the cost of a wrapper.
type discard struct{ Memory }

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) Commit() error               { return nil }
func (discardWriter) Abort() error                { return nil }

func (d *discard) Create(ctx context.Context, key string) (Writer, error) {
	return discardWriter{}, nil
}

// BenchmarkEncryptWrite measures the encryption wrapper's writer alone.
func BenchmarkEncryptWrite(b *testing.B) {
	_, k := testKey(b)
	e, _ := NewEncrypted(&discard{}, k)
	data := randBytes(64<<20, 1)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if err := Put(context.Background(), e, "x", bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecryptStream measures the encryption wrapper's sequential reader alone.
func BenchmarkDecryptStream(b *testing.B) {
	_, k := testKey(b)
	m := NewMemory()
	e, _ := NewEncrypted(m, k)
	data := randBytes(64<<20, 1)
	if err := Put(context.Background(), e, "x", bytes.NewReader(data)); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		obj, err := e.Open(context.Background(), "x")
		if err != nil {
			b.Fatal(err)
		}
		r, _ := obj.Stream(0, -1)
		if _, err := io.Copy(io.Discard, r); err != nil {
			b.Fatal(err)
		}
		r.Close()
		obj.Close()
	}
}
