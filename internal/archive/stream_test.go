package archive

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
)

func TestStreamEntry(t *testing.T) {
	images := smallImages()
	path := createArchive(t, images, nil)
	r, err := Open(path, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for name, want := range images {
		var got bytes.Buffer
		if err := r.StreamEntry(ImagesPrefix+name, &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("%s: streamed content differs (%d bytes, want %d)", name, got.Len(), len(want))
		}
	}
}

// TestStreamEntryGate checks that a damaged entry never reaches its
// consumer whole: wherever the damage is, the last frame is held back.
func TestStreamEntryGate(t *testing.T) {
	const name = "images/pages-1.img"
	want := smallImages()["pages-1.img"]
	for _, at := range []func(size int64) int64{
		func(s int64) int64 { return 10 },       // first frame
		func(s int64) int64 { return s / 2 },    // middle
		func(s int64) int64 { return s - 2 },    // last frame's checksum
		func(s int64) int64 { return s - 5000 }, // last frame's content
	} {
		path := createArchive(t, smallImages(), nil)
		off, size := entryOffset(t, path, name)
		flipByte(t, path, off+at(size))
		r, err := Open(path, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		err = r.StreamEntry(name, &got)
		r.Close()
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flip at %d of %d: error %v, want ErrCorrupt", at(size), size, err)
		}
		if got.Len() >= len(want) {
			t.Fatalf("flip at %d of %d: the whole entry (%d bytes) reached the consumer", at(size), size, got.Len())
		}
	}
}

// TestStreamEntryToPipe covers the splice path: raw frames go from the
// archive's page cache into the pipe.
func TestStreamEntryToPipe(t *testing.T) {
	images := map[string][]byte{
		"pages-1.img": append(randomBytes(3, 9<<20), textBytes(1<<20)...), // raw frames, then a compressed one
	}
	path := createArchive(t, images, nil)
	r, err := Open(path, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(pr)
		got <- b
	}()
	err = r.StreamEntry("images/pages-1.img", pw)
	pw.Close()
	if err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, images["pages-1.img"]) {
		t.Fatalf("streamed %d bytes that differ from the %d written", len(b), len(images["pages-1.img"]))
	}
}

// TestStreamEntryManyEmptyFrames: a stream of countless empty frames (or
// empty raw blocks) is not listed frame by frame, which a hostile archive
// could use to exhaust memory; it is verified, then decoded as a stream.
func TestStreamEntryManyEmptyFrames(t *testing.T) {
	empty := appendRawFrame(nil, nil)
	content := []byte("tail")
	raw := bytes.Repeat(empty, 50_000)
	raw = appendRawFrame(raw, content)
	path := hostileZip{entries: []zipEntry{{name: "images/pages-1.img", raw: raw, rawSize: uint64(len(content)), method: methodZstd}}}.write(t)
	r, err := Open(path, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var got bytes.Buffer
	if err := r.StreamEntry("images/pages-1.img", &got); err != nil {
		t.Fatal(err)
	}
	if got.String() != "tail" {
		t.Fatalf("got %q", got.String())
	}
}

func TestVerified(t *testing.T) {
	const name = "images/pages-1.img"
	path := createArchive(t, smallImages(), nil)
	r, err := Open(path, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Verified(name); err != nil {
		t.Fatalf("intact entry: %v", err)
	}
	r.Close()
	off, size := entryOffset(t, path, name)
	flipByte(t, path, off+size/2)
	r, err = Open(path, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.VerifyAhead(name)
	wantErr(t, r.Verified(name), ErrCorrupt)
}
