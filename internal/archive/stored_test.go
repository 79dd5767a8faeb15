package archive

import (
	"archive/zip"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestEveryStoredByteMatters flips each byte of an entry's stored
// (compressed) data in turn: every single flip must be refused, including
// flips in bits a zstd decoder ignores, which leave the content (and its
// SHA-256) unchanged — the stored-bytes CRC-32C catches those.
func TestEveryStoredByteMatters(t *testing.T) {
	dir := t.TempDir()
	images := filepath.Join(dir, "images")
	if err := os.Mkdir(images, 0o700); err != nil {
		t.Fatal(err)
	}
	var content bytes.Buffer
	for i := 0; content.Len() < 6000; i++ {
		fmt.Fprintf(&content, "vma %08x-%08x rw-p %d\n", i*4096, (i+1)*4096, i%7)
	}
	if err := os.WriteFile(filepath.Join(images, "pages-1.img"), content.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	m := &Manifest{Kind: KindProcess, Created: time.Now().UTC(), RootPID: 42,
		Processes: []Process{{PID: 42, Name: "t"}}, Options: DumpOptions{NetworkLock: "skip"}}
	path := filepath.Join(dir, "a.zip")
	if _, _, err := Create(path, m, images, nil, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	var f *zip.File
	for _, x := range zr.File {
		if x.Name == "images/pages-1.img" {
			f = x
		}
	}
	off, err := f.DataOffset()
	if err != nil {
		t.Fatal(err)
	}
	for i := int64(0); i < int64(f.CompressedSize64); i++ {
		d := append([]byte(nil), data...)
		d[off+i] ^= 0x40
		p := filepath.Join(dir, "x.zip")
		if err := os.WriteFile(p, d, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := Open(p, DefaultLimits())
		if err == nil {
			err = r.Verify(ExtractOptions{Concurrency: 1})
			r.Close()
		}
		if err == nil {
			t.Fatalf("a flipped byte at offset %d of the stored data was accepted", i)
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flip at %d: error %v does not wrap ErrCorrupt", i, err)
		}
	}
}
