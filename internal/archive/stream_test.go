package archive

import (
	"fmt"
	"time"

	"bytes"
	"errors"
	"golang.org/x/sys/unix"
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

// TestStreamEntryVmsplice covers decoded frames handed to the pipe by
// vmsplice: every frame's text is different, so a buffer reused before
// the reader took all of it would show up as wrong bytes. The reader is
// slow and reads in odd pieces; the pipe is smaller than a frame (frames
// are vmspliced; the short last one is copied).
func TestStreamEntryVmsplice(t *testing.T) {
	var content []byte
	for i := range 7 {
		frame := bytes.ReplaceAll(textBytes(frameSize), []byte("4711"), fmt.Appendf(nil, "%04d", i))
		content = append(content, frame...)
		if i == 3 {
			content = append(content, randomBytes(uint64(i), 2<<20)...) // a raw frame between
		}
	}
	content = append(content, textBytes(12345)...) // a short last frame
	path := createArchive(t, map[string][]byte{"pages-1.img": content}, nil)
	for _, pipeSize := range []int{64 << 10, 1 << 20} {
		r, err := Open(path, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unix.FcntlInt(pw.Fd(), unix.F_SETPIPE_SZ, pipeSize); err != nil {
			t.Logf("pipe of %d bytes refused (%v): testing the default size", pipeSize, err)
		}
		got := make(chan []byte)
		go func() {
			var b []byte
			buf := make([]byte, 77777)
			for i := 0; ; i++ {
				n, err := pr.Read(buf[:1+i%len(buf)])
				b = append(b, buf[:n]...)
				if err != nil {
					break
				}
				if i%50 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			got <- b
		}()
		err = r.StreamEntry("images/pages-1.img", pw)
		pw.Close()
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		b := <-got
		pr.Close()
		if !bytes.Equal(b, content) {
			i := 0
			for i < min(len(b), len(content)) && b[i] == content[i] {
				i++
			}
			t.Fatalf("pipe of %d bytes: streamed %d bytes, differing from the %d written at offset %d", pipeSize, len(b), len(content), i)
		}
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
