package archive

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"golang.org/x/sys/unix"
)

// SequentialSource is implemented by a Reader's source (see OpenReaderAt)
// when reading a range once, from its start to its end, costs much less
// than positioned reads of the same bytes: an object in a remote or an
// encrypted store, where every ReadAt fetches — and decrypts and
// authenticates — whole blocks, and where keeping the bytes for a second
// pass would need fresh memory as large as the entry.
//
// StreamEntry then reads a streamed entry in one pass: it hashes the stored
// bytes, cuts them into frames and hands each frame to CRIU (raw blocks
// vmspliced from the buffer they were read into, compressed frames decoded
// on every core) as they arrive. The last frame still waits until the
// stored bytes match the manifest's digest, so the guarantee of the
// positioned path holds: a consumer never completes with damaged content.
// VerifyAhead does nothing for such a source (the single pass checks the
// digest); Verified still checks an entry by itself, with positioned reads.
type SequentialSource interface {
	// StreamRange returns a reader of the n bytes at offset off. A read
	// error must be returned, never silently shortened data.
	StreamRange(off, n int64) (io.ReadCloser, error)
}

// AuthenticatedSource is a source that authenticates every byte before
// returning it: it returns nothing it cannot prove is what its writer
// wrote, and fails instead. An encrypted object is one: each of its chunks
// carries an AES-GCM tag over its bytes, its index and whether it is the
// last (see storage.Encrypted). StreamEntry then does not hash the stored
// bytes of the entry again: any change that a digest would find (a flipped
// bit, a truncation, a block moved) fails authentication first, in the
// chunk where it is, before any of its bytes reaches the consumer. The
// digests were never a defence against a writer: whoever can write an
// archive can write its manifest (see the package doc).
type AuthenticatedSource interface {
	Authenticated() bool
}

// sequential returns r's source as a SequentialSource when StreamEntry
// should read it in one pass: never for a local file (mmap and splice are
// cheaper still).
func (r *Reader) sequential() (SequentialSource, bool) {
	if r.f != nil {
		return nil, false
	}
	s, ok := r.src.(SequentialSource)
	return s, ok
}

// seqFrame is one stored frame read by the sequential feed, in order.
type seqFrame struct {
	stored []byte // the frame's stored bytes, in a buffer of storedPool
	size   int64  // content size
	raw    []span // raw blocks only: where their payloads are in stored
	out    []byte // decoded content (compressed frames)
	err    error
	done   chan struct{}
	last   bool
	// fallback: the frames from stored offset off on are not Cedana's;
	// the writer decodes the rest of the entry as a stream.
	fallback bool
	off      int64
	// lent frames (see lentFrames): the stored length, and whether the
	// frame was released (under lentFrames.mu).
	lent     int
	released bool
}

// frameSource gives readFrames the stored bytes of each frame: read into
// buffers of its own (copyFrames) or lent in place by the source
// (lentFrames).
type frameSource interface {
	// next reads the next frame, of at most left stored bytes, with
	// readFrame's checks and errors; errStopped once the feed stops.
	next(left int64) (*seqFrame, error)
	// release gives back the stored bytes of a frame next returned, once
	// nothing reads them any more; any goroutine, once per frame.
	release(j *seqFrame)
	// vmsplicable reports whether stored bytes may be vmspliced.
	vmsplicable() bool
}

// copyFrames reads each frame into a buffer of pool.
type copyFrames struct {
	r    io.Reader
	pool *storedPool
}

func (c *copyFrames) next(left int64) (*seqFrame, error) {
	buf := c.pool.get()
	if buf == nil {
		return nil, errStopped
	}
	j, err := readFrame(func(n int) ([]byte, error) {
		have := len(buf)
		buf = buf[:n]
		_, err := io.ReadFull(c.r, buf[have:])
		return buf, err
	}, left)
	if err != nil {
		c.pool.put(buf)
		return nil, err
	}
	return j, nil
}

func (c *copyFrames) release(j *seqFrame) { c.pool.put(j.stored) }
func (c *copyFrames) vmsplicable() bool   { return c.pool.vmsplicable() }

// maxStoredFrame bounds the stored size of a frame the sequential feed
// accepts: a frame of frameSize bytes of content stored as raw blocks
// takes frameSize plus 3 bytes per 128 KiB block and its header.
const maxStoredFrame = frameSize + 64<<10

// storedPool hands out the buffers stored frames are read into: mappings
// outside the Go heap (so that a buffer whose pages a pipe still holds is
// never reused by the allocator), made only when needed — pages a frame
// never touches cost nothing — and at most max of them.
type storedPool struct {
	mu      sync.Mutex
	free    [][]byte
	all     [][]byte
	max     int
	avail   chan struct{} // one token per buffer that may still be taken
	mapped  bool          // every buffer so far is a mapping (may be vmspliced)
	stopped <-chan struct{}
}

func newStoredPool(n int, stop <-chan struct{}) *storedPool {
	p := &storedPool{max: n, avail: make(chan struct{}, n), mapped: true, stopped: stop}
	for range n {
		p.avail <- struct{}{}
	}
	return p
}

// get returns an empty buffer of capacity maxStoredFrame, waiting for one
// to be put back when all are in use; nil once stop is closed.
func (p *storedPool) get() []byte {
	select {
	case <-p.avail:
	case <-p.stopped:
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b[:0]
	}
	b, err := unix.Mmap(-1, 0, maxStoredFrame, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		p.mapped = false
		b = make([]byte, maxStoredFrame)
	} else {
		p.all = append(p.all, b)
	}
	return b[:0]
}

// put returns a buffer taken with get.
func (p *storedPool) put(b []byte) {
	p.mu.Lock()
	p.free = append(p.free, b[:0])
	p.mu.Unlock()
	p.avail <- struct{}{}
}

// vmsplicable reports whether buffers may be vmspliced.
func (p *storedPool) vmsplicable() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mapped
}

// unmap releases the mappings; a pipe keeps its own references to pages
// vmspliced into it.
func (p *storedPool) unmap() {
	for _, b := range p.all {
		_ = unix.Munmap(b)
	}
}

// runSequential streams the entry from src in one pass (see
// SequentialSource).
func (s *feed) runSequential(src SequentialSource) error {
	workers := concurrency(0)
	frameBufs := workers + 4 // stored frames in flight
	stop := make(chan struct{})
	var (
		rc  io.ReadCloser
		err error
		fs  frameSource
	)
	d := checksFor(s.e.info, false)
	// hashed: readFrames need not feed d, because the source does (a
	// Lender writes to sum) or because there is nothing to compute (the
	// source authenticates every byte itself).
	hashed := false
	var sum io.Writer = d
	if a, ok := src.(AuthenticatedSource); ok && a.Authenticated() {
		d, sum, hashed = &digests{}, nil, true
	}
	if ls, ok := src.(LendingSource); ok {
		window := (frameBufs + 1) * maxStoredFrame
		rc, err = ls.LendRange(s.e.dataOffset, s.e.compSize, window, sum)
		l, lent := rc.(Lender)
		lent = lent && err == nil
		hashed = hashed || lent
		if lent && int64(l.Window()) >= min(int64(window), s.e.compSize) {
			fs = newLentFrames(l, frameBufs, stop)
		}
	} else {
		rc, err = src.StreamRange(s.e.dataOffset, s.e.compSize)
	}
	if err != nil {
		return fmt.Errorf("%w: read stored bytes: %w", ErrCorrupt, err)
	}
	defer rc.Close()
	if fs == nil {
		pool := newStoredPool(frameBufs, stop)
		defer pool.unmap() // after the goroutines have stopped (deferred below)
		fs = &copyFrames{r: rc, pool: pool}
	}
	var wg sync.WaitGroup
	defer func() {
		close(stop)
		if l, ok := fs.(*lentFrames); ok {
			l.l.Stop() // a Peek waiting for room that will not be given back
		}
		wg.Wait()
	}()

	frames := make(chan *seqFrame, workers+2) // in stream order, to the writer
	todo := make(chan *seqFrame, workers+2)   // compressed frames, to the decoders
	var readErr error                         // the reader's error, read after frames is closed
	wg.Go(func() {
		defer close(frames)
		defer close(todo)
		readErr = s.readFrames(fs, d, hashed, frames, todo, stop)
	})

	bufs := make(chan []byte, 2*workers+1) // decoded frames in flight
	for range cap(bufs) {
		bufs <- nil
	}
	alloc := s.frameBuffers(nil)
	alloc.heapSize = frameSize
	defer alloc.free() // after the workers have stopped
	for range workers {
		fd, err := frameDecoders.get()
		if err != nil {
			return err
		}
		wg.Go(func() {
			defer frameDecoders.put(fd)
			for {
				var out []byte
				select {
				case out = <-bufs:
				case <-stop:
					return
				}
				j, ok := <-todo
				if !ok {
					return
				}
				if out == nil {
					out = alloc.get()
				}
				j.out, j.err = decodeFrame(fd, j.stored, out[:cap(out)], j.size)
				fs.release(j)
				j.stored = nil
				close(j.done)
			}
		})
	}
	return s.writeSequential(frames, bufs, fs, alloc, &readErr)
}

// writeSequential writes the frames in order as they come, the last one
// only once the reader has checked the digest (it sends the last frame
// after the check).
func (s *feed) writeSequential(frames <-chan *seqFrame, bufs chan<- []byte, fs frameSource, alloc *frameAllocator, readErr *error) error {
	type held struct {
		b      []byte
		end    int64
		stored *seqFrame // a stored frame (else b is a decoded one)
	}
	var hold []held
	var written int64
	release := func() {
		for len(hold) > 0 && s.pushed-hold[0].end >= s.pipeCap {
			if hold[0].stored != nil {
				fs.release(hold[0].stored)
			} else {
				bufs <- hold[0].b[:0]
			}
			hold = hold[1:]
		}
	}
	for j := range frames {
		if j.fallback {
			return s.decodeRestAt(j.off, written)
		}
		<-j.done
		if j.err != nil {
			return fmt.Errorf("%w: frame at compressed offset %d: %v", ErrCorrupt, j.off, j.err)
		}
		var err error
		switch {
		case j.raw != nil && s.pipe != nil && fs.vmsplicable() && j.size >= s.pipeCap:
			err = s.vmspliceSpans(j.stored, j.raw)
			hold = append(hold, held{nil, s.pushed, j})
		case j.raw != nil:
			for _, sp := range j.raw {
				if err = s.write(j.stored[sp.off : sp.off+sp.n]); err != nil {
					break
				}
			}
			fs.release(j)
		case alloc.vmsplice.Load() && int64(len(j.out)) >= s.pipeCap:
			err = s.vmsplice(j.out)
			hold = append(hold, held{j.out, s.pushed, nil})
		default:
			err = s.write(j.out)
			bufs <- j.out[:0]
		}
		j.out = nil // (stored stays: a held frame is released later)
		if err != nil {
			s.writeErr = err
			return err
		}
		written += j.size
		// See decodeAndWrite: a vmspliced buffer is reused only once
		// pipeCap bytes went into the pipe after it.
		release()
		if j.last {
			return nil
		}
	}
	if *readErr != nil {
		return *readErr
	}
	return fmt.Errorf("%w: the stored stream ended early", ErrCorrupt)
}

// vmspliceSpans hands the spans of b to the pipe, as vmsplice does.
func (s *feed) vmspliceSpans(b []byte, spans []span) error {
	iov := make([]unix.Iovec, 0, len(spans))
	for len(spans) > 0 {
		iov = iov[:0]
		for _, sp := range spans {
			if sp.n > 0 {
				v := unix.Iovec{Base: &b[sp.off]}
				v.SetLen(int(sp.n))
				iov = append(iov, v)
			}
		}
		if len(iov) == 0 {
			return nil
		}
		n, err := unix.Vmsplice(int(s.pipe.Fd()), iov, 0)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		}
		s.pushed += int64(n)
		// Drop what went in: whole spans, then the start of the next.
		for k := int64(n); k > 0 && len(spans) > 0; {
			if spans[0].n <= k {
				k -= spans[0].n
				spans = spans[1:]
			} else {
				spans = append([]span{{spans[0].off + k, spans[0].n - k}}, spans[1:]...)
				k = 0
			}
		}
	}
	return nil
}

// readFrames reads the stored stream frame by frame from fs, hashing it
// into d on the way (unless the source did: hashed), and sends each frame
// to frames (and compressed ones to todo too). The last frame is sent only
// once the stream has ended where the entry does and its digest matches
// the manifest's. A stream that is not made of Cedana's frames ends with a
// fallback frame at the first frame that is not.
func (s *feed) readFrames(fs frameSource, d *digests, hashed bool, frames, todo chan<- *seqFrame, stop <-chan struct{}) error {
	size := s.e.compSize
	maxFrames := s.e.info.Size/(64<<10) + 16 // as split
	var total, off, n int64
	send := func(c chan<- *seqFrame, j *seqFrame) bool {
		select {
		case c <- j:
			return true
		case <-stop:
			return false
		}
	}
	for off < size {
		if n++; n > maxFrames {
			send(frames, &seqFrame{fallback: true, off: off})
			return nil
		}
		j, err := fs.next(size - off)
		if errors.Is(err, errFrameLayout) {
			send(frames, &seqFrame{fallback: true, off: off})
			return nil
		}
		if err != nil {
			if errors.Is(err, errStopped) {
				return err
			}
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return fmt.Errorf("%w: truncated frame at compressed offset %d", ErrCorrupt, off)
			}
			if errors.Is(err, errCorruptFrame) {
				return fmt.Errorf("%w: %v at compressed offset %d", ErrCorrupt, err, off)
			}
			return fmt.Errorf("%w: read stored bytes: %w", ErrCorrupt, err)
		}
		if !hashed {
			d.Write(j.stored)
		}
		j.off, j.done = off, make(chan struct{})
		off += int64(len(j.stored))
		if total += j.size; total > s.e.info.Size {
			fs.release(j)
			return fmt.Errorf("%w: decompresses to more than the %d bytes declared", ErrCorrupt, s.e.info.Size)
		}
		if off == size {
			// The whole entry has been read (and hashed): check it before
			// the last frame goes out.
			if total != s.e.info.Size {
				fs.release(j)
				return fmt.Errorf("%w: truncated: %d of %d bytes", ErrCorrupt, total, s.e.info.Size)
			}
			if err := d.verify(s.e.info); err != nil {
				fs.release(j)
				return err
			}
			j.last = true
		}
		if j.raw != nil {
			close(j.done)
		} else if !send(todo, j) {
			return errStopped
		}
		if !send(frames, j) {
			return errStopped
		}
	}
	return nil
}

// errCorruptFrame marks a frame that breaks the zstd format.
var errCorruptFrame = errors.New("damaged zstd frame")

// readFrame reads one frame, of at most left stored bytes, through grow,
// which returns the frame's first n stored bytes (n grows from call to
// call, up to maxStoredFrame), with the checks split and walkBlocks make.
// It returns errFrameLayout for a frame that is not one of Cedana's (the
// caller falls back) and an error wrapping errCorruptFrame for a damaged
// one.
func readFrame(grow func(n int) ([]byte, error), left int64) (*seqFrame, error) {
	limit := int(min(left, maxStoredFrame))
	// The fixed part of the header says how long the rest is.
	head, err := grow(min(5, limit))
	if err != nil {
		return nil, err
	}
	if len(head) >= 4 && binary.LittleEndian.Uint32(head)&skippableMagicMask == skippableMagic {
		return nil, errFrameLayout
	}
	if len(head) < 5 || binary.LittleEndian.Uint32(head) != zstdFrameMagic {
		return nil, fmt.Errorf("%w: bad zstd frame magic", errCorruptFrame)
	}
	fhd := head[4]
	hl := 5 + [4]int{0, 1, 2, 4}[fhd&0x03]
	fcs := [4]int{0, 2, 4, 8}[fhd>>6]
	if fhd&0x20 == 0 {
		hl++
	} else if fcs == 0 {
		fcs = 1
	}
	if hl+fcs > limit {
		return nil, io.ErrUnexpectedEOF
	}
	buf, err := grow(hl + fcs)
	if err != nil {
		return nil, err
	}
	fh, err := parseFrameHeader(buf)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errCorruptFrame, err)
	}
	if fh.contentSize < 0 || fh.contentSize > frameSize {
		return nil, errFrameLayout
	}
	var raw []span
	var content int64
	allRaw := true
	for blocks := 0; ; blocks++ {
		if blocks == maxFrameBlocks {
			return nil, errFrameLayout
		}
		pos := len(buf)
		if pos+blockHeaderLen > limit {
			return nil, tooLong(limit)
		}
		if buf, err = grow(pos + blockHeaderLen); err != nil {
			return nil, err
		}
		v := uint32(buf[pos]) | uint32(buf[pos+1])<<8 | uint32(buf[pos+2])<<16
		last, typ, n := v&1 != 0, (v>>1)&3, int(v>>3)
		switch typ {
		case 0:
			content += int64(n)
			raw = append(raw, span{int64(pos + blockHeaderLen), int64(n)})
		case 1: // RLE: one byte repeated n times
			allRaw, n = false, 1
		case 2:
			allRaw = false
		case 3:
			return nil, fmt.Errorf("%w: reserved zstd block type", errCorruptFrame)
		}
		if n > maxBlockSize {
			return nil, fmt.Errorf("%w: zstd block larger than 128 KiB", errCorruptFrame)
		}
		if pos+blockHeaderLen+n > limit {
			return nil, tooLong(limit)
		}
		if buf, err = grow(pos + blockHeaderLen + n); err != nil {
			return nil, err
		}
		if last {
			break
		}
	}
	if fh.checksum {
		pos := len(buf)
		if pos+frameChecksumLen > limit {
			return nil, tooLong(limit)
		}
		if buf, err = grow(pos + frameChecksumLen); err != nil {
			return nil, err
		}
	}
	j := &seqFrame{stored: buf, size: fh.contentSize}
	if allRaw && content == fh.contentSize && !fh.checksum {
		j.raw = raw
	}
	return j, nil
}

// tooLong is why a frame does not fit in limit bytes: the entry ends
// first (truncated), or the frame is longer than Cedana writes them.
func tooLong(limit int) error {
	if limit < maxStoredFrame {
		return io.ErrUnexpectedEOF
	}
	return errFrameLayout
}

// decodeRestAt decodes the entry from stored offset off to its end as a
// plain zstd stream, through positioned reads, once the whole entry's
// digest has been checked; written bytes of content went out before.
func (s *feed) decodeRestAt(off, written int64) error {
	if err := checkDigest(s.e, s.r.src, nil); err != nil {
		return err
	}
	dec := &decoders{}
	defer dec.close()
	rd, err := dec.open(methodZstd, io.NewSectionReader(s.src, off, s.src.Size()-off))
	if err != nil {
		return err
	}
	left := s.e.info.Size - written
	n, err := io.Copy(writerFunc(func(b []byte) (int, error) {
		if err := s.write(b); err != nil {
			s.writeErr = err
			return 0, err
		}
		return len(b), nil
	}), &sizeGuard{r: rd, left: left})
	if err != nil {
		return err
	}
	if n != left {
		return fmt.Errorf("%w: truncated: %d of %d bytes", ErrCorrupt, written+n, s.e.info.Size)
	}
	return nil
}
