package archive

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// seqSource is an archive file read as a store's object would be: through
// ReadAt (counted) and StreamRange (counted, and optionally failing after
// failAfter bytes with errInjected, as an encrypted object fails a chunk's
// authentication).
type seqSource struct {
	f         *os.File
	readAt    atomic.Int64 // bytes read with ReadAt
	streams   atomic.Int64 // StreamRange calls
	failAfter int64        // > 0: streams fail after that many bytes
}

var errInjected = errors.New("injected: chunk fails authentication")

func (s *seqSource) ReadAt(p []byte, off int64) (int, error) {
	n, err := s.f.ReadAt(p, off)
	s.readAt.Add(int64(n))
	return n, err
}

func (s *seqSource) StreamRange(off, n int64) (io.ReadCloser, error) {
	s.streams.Add(1)
	var r io.Reader = io.NewSectionReader(s.f, off, n)
	if s.failAfter > 0 {
		r = io.MultiReader(io.LimitReader(r, s.failAfter), &failReader{})
	}
	return io.NopCloser(r), nil
}

type failReader struct{}

func (failReader) Read([]byte) (int, error) { return 0, errInjected }

func (s *seqSource) Close() error { return s.f.Close() }

// openSeq opens the archive at path through a seqSource.
func openSeq(t *testing.T, path string) (*Reader, *seqSource) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	src := &seqSource{f: f}
	r, err := OpenReaderAt(path, src, st.Size(), Limits{})
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	return r, src
}

// TestSequentialStreamEntry: through a SequentialSource, every entry
// streams whole and right, with one StreamRange each and no positioned
// read of its bytes (one pass, no check ahead).
func TestSequentialStreamEntry(t *testing.T) {
	images := smallImages()
	path := createArchive(t, images, nil)
	r, src := openSeq(t, path)
	defer r.Close()
	for name := range images {
		r.VerifyAhead(ImagesPrefix + name) // must not read anything
	}
	time.Sleep(50 * time.Millisecond)
	opened := src.readAt.Load()
	streamed := 0
	for name, want := range images {
		if !r.Streamable(ImagesPrefix+name) || len(want) == 0 {
			continue
		}
		streamed++
		var got bytes.Buffer
		if err := r.StreamEntry(ImagesPrefix+name, &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("%s: streamed content differs (%d bytes, want %d)", name, got.Len(), len(want))
		}
	}
	if n := src.readAt.Load() - opened; n != 0 {
		t.Errorf("streaming read %d bytes with ReadAt besides the single pass", n)
	}
	if n := src.streams.Load(); n != int64(streamed) {
		t.Errorf("%d StreamRange calls for %d entries", n, streamed)
	}
}

// TestSequentialGate: a damaged entry never reaches its consumer whole
// through the single pass either; the last frame is held back until the
// digest matches (the flips below keep the frames decodable, so only the
// digest catches some of them).
func TestSequentialGate(t *testing.T) {
	const name = "images/pages-1.img"
	want := smallImages()["pages-1.img"]
	for _, at := range []func(size int64) int64{
		func(s int64) int64 { return 10 },
		func(s int64) int64 { return s / 2 },
		func(s int64) int64 { return s - 2 },
		func(s int64) int64 { return s - 5000 }, // raw content of the last frame: decodes fine
	} {
		path := createArchive(t, smallImages(), nil)
		off, size := entryOffset(t, path, name)
		flipByte(t, path, off+at(size))
		r, _ := openSeq(t, path)
		var got bytes.Buffer
		err := r.StreamEntry(name, &got)
		r.Close()
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flip at %d of %d: error %v, want ErrCorrupt", at(size), size, err)
		}
		if got.Len() >= len(want) {
			t.Fatalf("flip at %d of %d: the whole entry (%d bytes) reached the consumer", at(size), size, got.Len())
		}
	}
}

// TestSequentialReadError: a stream that fails part-way (an encrypted
// chunk failing authentication) stops the feed with that error, before
// the whole entry went out.
func TestSequentialReadError(t *testing.T) {
	const name = "images/pages-1.img"
	want := smallImages()["pages-1.img"]
	path := createArchive(t, smallImages(), nil)
	_, size := entryOffset(t, path, name)
	for _, after := range []int64{1, size / 2, size - 1} {
		r, src := openSeq(t, path)
		src.failAfter = after
		var got bytes.Buffer
		err := r.StreamEntry(name, &got)
		r.Close()
		if !errors.Is(err, errInjected) || !errors.Is(err, ErrCorrupt) {
			t.Fatalf("failing after %d of %d bytes: error %v, want the stream's error as ErrCorrupt", after, size, err)
		}
		if got.Len() >= len(want) {
			t.Fatalf("failing after %d bytes: the whole entry reached the consumer", after)
		}
	}
}

// TestSequentialVmsplice: raw frames are vmspliced from the buffers they
// were read into, decoded ones from theirs; every frame differs, so a
// buffer reused before the pipe's reader took all of it shows up as wrong
// bytes. The reader is slow and reads odd pieces; pipes smaller than a
// frame and of a frame's size.
func TestSequentialVmsplice(t *testing.T) {
	var content []byte
	for i := range 9 {
		if i%3 == 1 {
			content = append(content, randomBytes(uint64(i), frameSize)...) // raw frames
		} else {
			content = append(content, bytes.ReplaceAll(textBytes(frameSize), []byte("4711"), fmt.Appendf(nil, "%04d", i))...)
		}
	}
	content = append(content, randomBytes(99, 3000)...) // a short raw last frame
	path := createArchive(t, map[string][]byte{"pages-1.img": content}, nil)
	for _, pipeSize := range []int{64 << 10, 1 << 20} {
		r, _ := openSeq(t, path)
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unix.FcntlInt(pw.Fd(), unix.F_SETPIPE_SZ, pipeSize); err != nil {
			t.Logf("pipe of %d bytes refused (%v): testing the default size", pipeSize, err)
		}
		var wg sync.WaitGroup
		var b []byte
		wg.Go(func() {
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
		})
		err = r.StreamEntry("images/pages-1.img", pw)
		pw.Close()
		r.Close()
		wg.Wait()
		pr.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, content) {
			i := 0
			for i < min(len(b), len(content)) && b[i] == content[i] {
				i++
			}
			t.Fatalf("pipe of %d bytes: streamed %d bytes, differing from the %d written at offset %d", pipeSize, len(b), len(content), i)
		}
	}
}

// TestSequentialFallback: a stream that stops being Cedana's frames part
// of the way through (a skippable frame, then more frames) is decoded as
// a stream from there, after the whole entry's digest was checked; a
// stream of countless empty frames likewise.
func TestSequentialFallback(t *testing.T) {
	a, b := randomBytes(1, frameSize), textBytes(100_000)
	skip := []byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 'x', 'x', 'x', 'x'} // skippable frame, 4 bytes
	raw := appendRawFrame(nil, a)
	raw = append(raw, skip...)
	raw = appendRawFrame(raw, b)
	many := appendRawFrame(bytes.Repeat(appendRawFrame(nil, nil), 50_000), []byte("tail"))
	for _, c := range []struct {
		name string
		raw  []byte
		want []byte
	}{
		{"skippable in the middle", raw, append(bytes.Clone(a), b...)},
		{"empty frames", many, []byte("tail")},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := hostileZip{entries: []zipEntry{{name: "images/pages-1.img", raw: c.raw, rawSize: uint64(len(c.want)), method: methodZstd}}}.write(t)
			r, _ := openSeq(t, path)
			defer r.Close()
			var got bytes.Buffer
			if err := r.StreamEntry("images/pages-1.img", &got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), c.want) {
				t.Fatalf("got %d bytes, want %d", got.Len(), len(c.want))
			}
		})
	}
	// The same with the digest wrong: the fallback checks it first.
	path := hostileZip{entries: []zipEntry{{name: "images/pages-1.img", raw: raw, rawSize: uint64(len(a) + len(b)), method: methodZstd}},
		editManifest: func(m *Manifest) { m.Entries[0].StoredXXH3 = fmt.Sprintf("%032x", 1) }}.write(t)
	r, _ := openSeq(t, path)
	defer r.Close()
	var got bytes.Buffer
	err := r.StreamEntry("images/pages-1.img", &got)
	wantErr(t, err, ErrCorrupt)
	if got.Len() >= len(a)+len(b) {
		t.Fatal("the whole entry reached the consumer despite its digest")
	}
}
