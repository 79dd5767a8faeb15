package archive

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// memDest is a Destination in memory that records Commit and Abort.
type memDest struct {
	buf                bytes.Buffer
	committed, aborted bool
	failAfter          int // fail writes once this many bytes were written (0: never)
}

func (d *memDest) Write(p []byte) (int, error) {
	if d.failAfter > 0 && d.buf.Len()+len(p) > d.failAfter {
		return 0, errors.New("store is full")
	}
	return d.buf.Write(p)
}
func (d *memDest) Commit() error { d.committed = true; return nil }
func (d *memDest) Abort() error  { d.aborted = true; return nil }

// A Destination receives the same archive a file would, and
// OpenReaderAt reads and verifies it through ReadAt alone.
func TestCreateToAndOpenReaderAt(t *testing.T) {
	images := smallImages()
	dst := &memDest{}
	if _, size, err := CreateTo("mem:ckpt.zip", dst, testManifest(), writeImages(t, images), nil, WriteOptions{}); err != nil {
		t.Fatal(err)
	} else if size != int64(dst.buf.Len()) || !dst.committed || dst.aborted {
		t.Fatalf("size %d, %d bytes written, committed %v, aborted %v", size, dst.buf.Len(), dst.committed, dst.aborted)
	}
	data := dst.buf.Bytes()
	r, err := OpenReaderAt("mem:ckpt.zip", bytes.NewReader(data), int64(len(data)), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := r.Extract(out, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	for name, want := range images {
		got, err := os.ReadFile(filepath.Join(out, "images", name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %d bytes, err %v; want %d bytes", name, len(got), err, len(want))
		}
	}
	// A flipped byte in the stored pages is caught before extraction ends.
	bad := bytes.Clone(data)
	bad[len(bad)/2] ^= 0xff
	r, err = OpenReaderAt("mem:bad.zip", bytes.NewReader(bad), int64(len(bad)), Limits{})
	if err == nil {
		err = r.Extract(t.TempDir(), ExtractOptions{})
		r.Close()
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("tampered archive: %v, want ErrCorrupt", err)
	}
}

// A destination that fails mid-way is aborted, never committed.
func TestCreateToFailingDestination(t *testing.T) {
	dst := &memDest{failAfter: 1 << 20}
	_, _, err := CreateTo("mem:full.zip", dst, testManifest(), writeImages(t, smallImages()), nil, WriteOptions{})
	if err == nil || dst.committed || !dst.aborted {
		t.Fatalf("err %v, committed %v, aborted %v; want an error and an abort", err, dst.committed, dst.aborted)
	}
}
