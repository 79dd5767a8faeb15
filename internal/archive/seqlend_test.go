package archive

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lendSource is a seqSource that also lends its ranges (LendingSource),
// as an encrypted object does, and holds StreamEntry to the Lender's
// contract: bytes given back are overwritten at once (so a frame used
// after its Return shows up as wrong bytes, in a buffer or through a
// pipe), and a Peek past the window fails the test.
type lendSource struct {
	*seqSource
	t       *testing.T
	lent    []*testLender
	noLend  bool // LendRange returns a plain stream
	smallWd bool // LendRange lends with a window smaller than asked
	authed  bool // Authenticated says so
	sums    int  // LendRange calls given a digest to feed
}

// Authenticated implements AuthenticatedSource.
func (s *lendSource) Authenticated() bool { return s.authed }

func (s *lendSource) LendRange(off, n int64, window int, sum io.Writer) (io.ReadCloser, error) {
	if sum != nil {
		s.sums++
	}
	if s.noLend {
		return s.StreamRange(off, n)
	}
	mem, err := unix.Mmap(-1, 0, int(max(n, 1)), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	k, err := s.f.ReadAt(mem[:n], off)
	if int64(k) < n {
		unix.Munmap(mem)
		return nil, fmt.Errorf("short read: %v", err)
	}
	if s.smallWd {
		window /= 2
	}
	l := &testLender{t: s.t, mem: mem[:n], window: int(min(int64(window), n)), failAfter: s.failAfter, sum: sum}
	s.lent = append(s.lent, l)
	return l, nil
}

// testLender lends bytes read into a mapping.
type testLender struct {
	t         *testing.T
	mem       []byte
	window    int
	failAfter int64 // > 0: bytes from there on fail (errInjected)
	sum       io.Writer
	summed    int // bytes written to sum

	mu             sync.Mutex
	pos, freed     int
	peeks, returns int
	stopped        bool
}

func (l *testLender) Peek(n int) ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.peeks++
	switch {
	case l.stopped:
		return nil, errors.New("stopped")
	case l.pos+n-l.freed > l.window:
		l.t.Errorf("peek of %d bytes with %d lent: past the window of %d", n, l.pos-l.freed, l.window)
		return nil, errors.New("past the window")
	case l.failAfter > 0 && int64(l.pos+n) > l.failAfter:
		return nil, errInjected
	case l.pos+n > len(l.mem):
		return nil, io.ErrUnexpectedEOF
	}
	if l.sum != nil && l.pos+n > l.summed {
		l.sum.Write(l.mem[l.summed : l.pos+n])
		l.summed = l.pos + n
	}
	return l.mem[l.pos : l.pos+n : l.pos+n], nil
}

func (l *testLender) Skip(n int) {
	l.mu.Lock()
	l.pos += n
	l.mu.Unlock()
}

func (l *testLender) Return(n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.freed+n > l.pos {
		l.t.Errorf("returned %d bytes with %d lent", n, l.pos-l.freed)
		return
	}
	for i := range l.mem[l.freed : l.freed+n] {
		l.mem[l.freed+i] = 0xa5 ^ byte(i)
	}
	l.freed += n
	l.returns++
}

func (l *testLender) Stop() {
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
}

func (l *testLender) Window() int { return l.window }

func (l *testLender) Read(p []byte) (int, error) {
	l.mu.Lock()
	left := len(l.mem) - l.pos
	l.mu.Unlock()
	if left == 0 {
		return 0, io.EOF
	}
	k := min(len(p), left, l.window)
	b, err := l.Peek(k)
	if err != nil {
		return 0, err
	}
	copy(p, b)
	l.Skip(k)
	l.Return(k)
	return k, nil
}

func (l *testLender) Close() error {
	l.Stop()
	return unix.Munmap(l.mem[:cap(l.mem)])
}

// openLend opens the archive at path through a lendSource.
func openLend(t *testing.T, path string) (*Reader, *lendSource) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	src := &lendSource{seqSource: &seqSource{f: f}, t: t}
	r, err := OpenReaderAt(path, src, st.Size(), Limits{})
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	return r, src
}

// TestLentStreamEntry: through a LendingSource, every entry streams whole
// and right from the lent bytes (given back in order, each frame once the
// consumer is done with it: overwritten bytes would show), into a buffer
// and into a pipe (vmsplice from the lent bytes, a slow reader); and the
// same when the source cannot lend, or lends a window too small (the
// bytes are then read as a stream).
func TestLentStreamEntry(t *testing.T) {
	var content []byte
	for i := range 9 {
		if i%3 == 1 {
			content = append(content, randomBytes(uint64(i), frameSize)...) // raw frames
		} else {
			content = append(content, bytes.ReplaceAll(textBytes(frameSize), []byte("4711"), fmt.Appendf(nil, "%04d", i))...)
		}
	}
	content = append(content, randomBytes(99, 3000)...) // a short raw last frame
	images := smallImages()
	images["pages-9.img"] = content
	path := createArchive(t, images, nil)
	for _, mode := range []string{"lend", "no lend", "small window", "authenticated", "authenticated, no lend"} {
		r, src := openLend(t, path)
		src.noLend, src.smallWd = strings.HasSuffix(mode, "no lend"), mode == "small window"
		src.authed = strings.HasPrefix(mode, "authenticated")
		for name, want := range images {
			if !r.Streamable(ImagesPrefix+name) || len(want) == 0 {
				continue
			}
			var got bytes.Buffer
			if err := r.StreamEntry(ImagesPrefix+name, &got); err != nil {
				t.Fatalf("%s, %s: %v", mode, name, err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Fatalf("%s, %s: streamed content differs (%d bytes, want %d)", mode, name, got.Len(), len(want))
			}
			piped := slowPipe(t, r, ImagesPrefix+name)
			if !bytes.Equal(piped, want) {
				t.Fatalf("%s, %s: piped content differs (%d bytes, want %d)", mode, name, len(piped), len(want))
			}
		}
		if n := src.readAt.Load(); n > 64<<10 {
			t.Errorf("%s: streaming read %d bytes with ReadAt besides the single pass", mode, n)
		}
		// Everything was lent; what is not given back at the end was
		// vmspliced into the pipe last (the pipe still holds it).
		for _, l := range src.lent {
			if mode == "lend" && l.pos != len(l.mem) {
				t.Errorf("%s: %d bytes lent of %d", mode, l.pos, len(l.mem))
			}
		}
		if mode == "lend" && len(src.lent) == 0 {
			t.Errorf("nothing was lent")
		}
		// A source that authenticates its bytes is not hashed again.
		if src.authed && src.sums != 0 {
			t.Errorf("%s: %d streams were given a digest to feed, want none", mode, src.sums)
		}
		if !src.authed && src.sums == 0 {
			t.Errorf("%s: no stream was given the entry's digest", mode)
		}
		r.Close()
	}
}

// slowPipe streams entry name into a 64 KiB pipe read slowly, in odd
// pieces, and returns what came out.
func slowPipe(t *testing.T, r *Reader, name string) []byte {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	_, _ = unix.FcntlInt(pw.Fd(), unix.F_SETPIPE_SZ, 64<<10)
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
	err = r.StreamEntry(name, pw)
	pw.Close()
	wg.Wait()
	pr.Close()
	if err != nil {
		t.Fatalf("%s into a pipe: %v", name, err)
	}
	return b
}

// TestLentGate: damaged stored bytes lent by the source never reach the
// consumer whole (the digest gates the last frame), and a source that
// fails part-way (an encrypted chunk failing authentication: Peek's
// error) stops the feed with that error.
func TestLentGate(t *testing.T) {
	const name = "images/pages-1.img"
	want := smallImages()["pages-1.img"]
	for _, at := range []func(size int64) int64{
		func(s int64) int64 { return 10 },
		func(s int64) int64 { return s / 2 },
		func(s int64) int64 { return s - 2 },
		func(s int64) int64 { return s - 5000 },
	} {
		path := createArchive(t, smallImages(), nil)
		off, size := entryOffset(t, path, name)
		flipByte(t, path, off+at(size))
		r, src := openLend(t, path)
		var got bytes.Buffer
		err := r.StreamEntry(name, &got)
		r.Close()
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flip at %d of %d: error %v, want ErrCorrupt", at(size), size, err)
		}
		if got.Len() >= len(want) {
			t.Fatalf("flip at %d of %d: the whole entry reached the consumer", at(size), size)
		}
		if len(src.lent) == 0 {
			t.Fatal("nothing was lent")
		}
	}
	path := createArchive(t, smallImages(), nil)
	_, size := entryOffset(t, path, name)
	for _, after := range []int64{1, size / 2, size - 1} {
		r, src := openLend(t, path)
		src.failAfter = after
		var got bytes.Buffer
		err := r.StreamEntry(name, &got)
		r.Close()
		if !errors.Is(err, errInjected) || !errors.Is(err, ErrCorrupt) {
			t.Fatalf("failing after %d of %d bytes: error %v, want the source's error as ErrCorrupt", after, size, err)
		}
		if got.Len() >= len(want) {
			t.Fatalf("failing after %d bytes: the whole entry reached the consumer", after)
		}
	}
}

// TestLentWriterFails: when the consumer goes away mid-entry (CRIU died:
// the pipe's reader is closed) with frames lent, StreamEntry returns the
// write error and does not hang.
func TestLentWriterFails(t *testing.T) {
	content := randomBytes(5, 12*frameSize)
	path := createArchive(t, map[string][]byte{"pages-1.img": content}, nil)
	r, _ := openLend(t, path)
	defer r.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, _ = io.CopyN(io.Discard, pr, 3*frameSize+5)
		pr.Close()
	}()
	done := make(chan error, 1)
	go func() { done <- r.StreamEntry("images/pages-1.img", pw) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("StreamEntry succeeded into a closed pipe")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("StreamEntry hangs after its consumer went away")
	}
	pw.Close()
}

// TestLentFallback: a lent stream that stops being Cedana's frames part
// of the way through is decoded as a stream from there, as through the
// copying path (TestSequentialFallback), and a damaged frame is refused.
func TestLentFallback(t *testing.T) {
	a, b := randomBytes(1, frameSize), textBytes(100_000)
	skip := []byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 'x', 'x', 'x', 'x'} // skippable frame, 4 bytes
	raw := appendRawFrame(nil, a)
	raw = append(raw, skip...)
	raw = appendRawFrame(raw, b)
	path := hostileZip{entries: []zipEntry{{name: "images/pages-1.img", raw: raw, rawSize: uint64(len(a) + len(b)), method: methodZstd}}}.write(t)
	r, src := openLend(t, path)
	var got bytes.Buffer
	if err := r.StreamEntry("images/pages-1.img", &got); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if !bytes.Equal(got.Bytes(), append(bytes.Clone(a), b...)) || len(src.lent) == 0 {
		t.Fatalf("got %d bytes, want %d (%d lent)", got.Len(), len(a)+len(b), len(src.lent))
	}
	bad := bytes.Clone(raw)
	bad[len(appendRawFrame(nil, a))+len(skip)+4] = 0xff // the second frame's descriptor: reserved bit
	path = hostileZip{entries: []zipEntry{{name: "images/pages-1.img", raw: bad, rawSize: uint64(len(a) + len(b)), method: methodZstd}}}.write(t)
	r, _ = openLend(t, path)
	defer r.Close()
	got.Reset()
	wantErr(t, r.StreamEntry("images/pages-1.img", &got), ErrCorrupt)
	if got.Len() >= len(a)+len(b) {
		t.Fatal("the whole entry reached the consumer")
	}
}
