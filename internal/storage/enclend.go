package storage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// Lend is Stream for a reader that reads the range once and can use its
// bytes where they lie (archive.LendingSource): the chunks are opened in
// parallel straight into a ring of memory that the reader borrows from
// (Peek, Skip, Return), instead of into buffers it would copy out of.
// The returned reader lends a window of at least window bytes; when the
// ring cannot be made it is an ordinary Stream.
//
// Every chunk is authenticated before any of its bytes is lent, as Read
// does. For an object in a directory, each worker reads its chunk's
// ciphertext itself (a positioned read into a reused buffer: cheaper here
// than opening the chunks from a mapping of the file, whose pages AES-GCM
// reads at less than half its speed on cached buffers).
//
// sum, when not nil, gets every byte of the range in order before Peek or
// Read returns it: the workers pass each chunk on right after opening it,
// so a digest of the range (the archive's) reads bytes still in the
// core's cache rather than again from memory. An ordinary Stream (when
// the ring cannot be made) leaves sum alone.
func (o *encObject) Lend(off, n int64, window int, sum io.Writer) (io.ReadCloser, error) {
	off, n, err := clampRange(off, n, o.h.size)
	if err != nil {
		return nil, o.e.err("read", o.key, err, "")
	}
	cs := o.h.chunkSize
	if n == 0 || window <= 0 || cs%int64(os.Getpagesize()) != 0 {
		return o.Stream(off, n)
	}
	first, last := off/cs, (off+n-1)/cs
	skip := off - first*cs
	// Ring coordinates: 0 is the start of chunk first. The ring holds
	// window bytes lent and peeked plus the chunk being opened past them
	// (a chunk may only be opened once all of its room was given back),
	// or the whole range when that is less.
	span := (last - first + 1) * cs
	size := min((int64(window)+cs-1)/cs*cs+cs, span)
	mem, err := mapRing(int(size))
	if err != nil {
		return o.Stream(off, n)
	}
	lendable := n // the whole range fits
	if size < span {
		lendable = min(size-cs, n)
	}
	s := &lentStream{o: o, mem: mem, size: size, first: first, pos: skip, pos0: skip, end: skip + n,
		window: int(lendable), freed: skip, done: make(chan struct{}), sum: sum}
	s.cond = sync.NewCond(&s.mu)
	ctOff, _ := o.ctRange(first)
	lastOff, lastN := o.ctRange(last)
	if fo, ok := o.inner.(interface{ File() *os.File }); ok {
		s.file = fo.File()
	} else {
		s.src, err = o.inner.Stream(ctOff, lastOff+lastN-ctOff)
		if err != nil {
			unmapRing(mem)
			return nil, err
		}
	}
	s.pipe = newPipeline(o.e.workers, o.e.workers*encPipelineFactor, s.open)
	go s.fill(first, last)
	return s, nil
}

// cacheHint asks a ReadCache for blocks of about 1 MiB (whole chunks) and
// one read ahead when the object is a local file: a positioned read then
// costs one chunk's decryption, not a round trip.
func (o *encObject) cacheHint() (int64, int) {
	if _, ok := o.inner.(interface{ File() *os.File }); !ok {
		return 0, 0
	}
	return (1<<20 + o.h.chunkSize - 1) / o.h.chunkSize * o.h.chunkSize, 1
}

// lentStream is a range of an encrypted object opened into a ring of
// memory mapped twice in a row, so that any size bytes from any position
// are contiguous: a record that straddles the ring's end is lent in one
// piece. The bytes at ring position p are mem[p%size].
type lentStream struct {
	o      *encObject
	mem    []byte // 2*size bytes, see mapRing
	size   int64
	first  int64    // the first chunk's index
	file   *os.File // the ciphertext, for positioned reads by the workers
	src    io.ReadCloser
	pipe   *pipeline
	done   chan struct{} // closed when fill returns
	ferr   error         // fill's error, read after done
	window int
	// sum gets the range's bytes in order (see Lend); sumFailed is set,
	// in that order too, once a chunk failed.
	sum       io.Writer
	sumFailed bool
	pos0      int64 // the range's start

	// The consumer's side (one goroutine).
	ready int64 // ring bytes opened and authenticated, in order
	pos   int64 // the next byte to lend
	end   int64 // the end of the range
	err   error // sticky

	mu      sync.Mutex
	cond    *sync.Cond
	freed   int64 // bytes before it were given back
	stopped bool
}

// open is the workers' function: read the chunk's ciphertext (positioned
// reads of a file) and open it into its room in the ring, then pass its
// bytes of the range to sum once the chunk before it has been.
func (s *lentStream) open(j *cryptJob) {
	if s.sum != nil {
		defer s.hash(j)
	}
	if s.file != nil {
		if n, err := s.file.ReadAt(j.in, j.at); n < len(j.in) {
			if err == nil || errors.Is(err, io.EOF) {
				err = withKind(ErrCorrupt, fmt.Errorf("chunk %d: %w", j.idx, io.ErrUnexpectedEOF))
			}
			j.err = s.o.e.err("read", s.o.key, err, "the stored object ended early")
			return
		}
	}
	// j.out has exactly the plaintext's capacity: Open writes it there.
	_, j.err = s.o.open(j.out, int64(j.idx), j.in)
}

// hash writes the range's bytes of chunk j to sum, in order: after the
// chunk before it (the workers take chunks in order, so the oldest never
// waits), while they are still in this core's cache. Nothing more is
// written after a chunk that failed.
func (s *lentStream) hash(j *cryptJob) {
	if j.prev != nil {
		<-j.prev
	}
	if j.err != nil {
		s.sumFailed = true
	}
	if !s.sumFailed {
		from := (int64(j.idx) - s.first) * s.o.h.chunkSize
		lo, hi := max(from, s.pos0), min(from+int64(cap(j.out)), s.end)
		if lo < hi {
			s.sum.Write(j.out[lo-from : hi-from : hi-from])
		}
	}
	close(j.hashed)
}

// room waits until the ring bytes [from, to) were given back and returns
// them (capacity to-from); false once stopped.
func (s *lentStream) room(from, to int64) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.stopped && to-s.freed > s.size {
		s.cond.Wait()
	}
	if s.stopped {
		return nil, false
	}
	p := from % s.size
	return s.mem[p : p : p+to-from], true
}

// fill queues the chunks first..last, each into its room once given back.
func (s *lentStream) fill(first, last int64) {
	defer close(s.done)
	defer s.pipe.close()
	cs := s.o.h.chunkSize
	var prev chan struct{} // closed once the chunk before was hashed
	for i := first; i <= last; i++ {
		ctOff, ctN := s.o.ctRange(i)
		k := i - first
		out, ok := s.room(k*cs, k*cs+ctN-encTag)
		if !ok {
			return
		}
		j := s.pipe.job()
		if int64(cap(j.in)) < ctN {
			j.in = make([]byte, ctN)
		}
		j.in, j.out, j.idx, j.at = j.in[:ctN], out, uint64(i), ctOff
		if s.sum != nil {
			j.prev, j.hashed = prev, make(chan struct{})
			prev = j.hashed
		}
		if s.file == nil {
			if _, err := io.ReadFull(s.src, j.in); err != nil {
				s.ferr = err
				s.pipe.recycle(j)
				return
			}
		}
		if !s.pipe.submit(j) {
			return
		}
	}
}

// Peek returns the next n bytes, in place, once their chunks are opened
// and authenticated. They stay unchanged until given back with Return. At
// most Window bytes may be lent (skipped, not yet returned) and peeked.
func (s *lentStream) Peek(n int) ([]byte, error) {
	if s.err != nil {
		return nil, s.err
	}
	if n > s.window || s.pos+int64(n)-s.lentFrom() > int64(s.window) {
		return nil, s.o.e.err("read", s.o.key, fmt.Errorf("peek of %d bytes past the lent window of %d", n, s.window), "")
	}
	if s.pos+int64(n) > s.end {
		s.err = io.ErrUnexpectedEOF
		return nil, s.err
	}
	for s.ready < s.pos+int64(n) {
		j, ok := s.pipe.next()
		if !ok {
			<-s.done
			switch {
			case s.ferr != nil && (errors.Is(s.ferr, io.EOF) || errors.Is(s.ferr, io.ErrUnexpectedEOF)):
				s.err = s.o.e.err("read", s.o.key, withKind(ErrCorrupt, s.ferr), "the stored object ended early")
			case s.ferr != nil:
				s.err = s.ferr
			default:
				s.err = s.o.e.err("read", s.o.key, errStreamStopped, "")
			}
			return nil, s.err
		}
		if j.err != nil {
			s.err = j.err
			s.pipe.recycle(j)
			return nil, s.err
		}
		s.ready = (int64(j.idx)-s.first)*s.o.h.chunkSize + int64(cap(j.out))
		s.pipe.recycle(j)
	}
	p := s.pos % s.size
	return s.mem[p : p+int64(n) : p+int64(n)], nil
}

var errStreamStopped = errors.New("stream stopped")

// lentFrom is the first byte not given back.
func (s *lentStream) lentFrom() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.freed
}

// Skip moves past n peeked bytes; they stay lent until Return.
func (s *lentStream) Skip(n int) { s.pos += int64(n) }

// Return gives back the oldest n lent bytes: their room may be reused.
// It may be called from any goroutine, one at a time.
func (s *lentStream) Return(n int) {
	s.mu.Lock()
	s.freed += int64(n)
	s.mu.Unlock()
	s.cond.Broadcast()
}

// Window is how many bytes may be lent and peeked at once.
func (s *lentStream) Window() int { return s.window }

// Stop makes a waiting Peek, and every later one, fail; the bytes lent
// stay valid until Close.
func (s *lentStream) Stop() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	s.cond.Broadcast()
	s.pipe.stop()
}

// Read copies the next bytes out (an ordinary reader of the range).
func (s *lentStream) Read(p []byte) (int, error) {
	left := s.end - s.pos
	if left == 0 {
		return 0, io.EOF
	}
	// Whatever one chunk gives, without waiting for more.
	k := min(int64(len(p)), left, int64(s.window), s.o.h.chunkSize-s.pos%s.o.h.chunkSize)
	b, err := s.Peek(int(k))
	if err != nil {
		return 0, err
	}
	copy(p, b)
	s.Skip(int(k))
	s.Return(int(k))
	return int(k), nil
}

// Close stops the workers and releases the ring, which the caller must no
// longer read (pages vmspliced into a pipe stay there unchanged).
func (s *lentStream) Close() error {
	s.Stop()
	<-s.done
	var err error
	if s.src != nil {
		err = s.src.Close()
	}
	s.pipe.drain()
	// Every queued chunk has been opened: no worker writes the ring now.
	if s.mem != nil {
		unmapRing(s.mem)
		s.mem = nil
	}
	return err
}
