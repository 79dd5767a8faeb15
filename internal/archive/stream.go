package archive

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Streamable reports whether entry name can be given to StreamEntry: it
// exists, records the SHA-256 of its stored bytes (format 2 and later) and
// is zstd-compressed.
func (r *Reader) Streamable(name string) bool {
	e, ok := r.entries[name]
	return ok && e.info.StoredSHA256 != "" && e.method == methodZstd
}

// StreamEntry decodes entry name into w while reading it, for a consumer
// that cannot wait for the whole entry to be verified first (CRIU reading
// memory pages from a pipe during a restore).
//
// The SHA-256 of the stored bytes is computed on one goroutine while the
// frames are decoded on the others and written to w in order; frames of
// raw blocks (incompressible memory) are spliced from the archive file
// straight into w when w is a pipe, never read by Cedana. The archive is
// read with positioned reads for the frames (a file truncated under a
// restore is a read error), and mapped for the digest (see checkDigest). The last
// frame is written only once the SHA-256 matches the manifest's, so a
// consumer that needs the whole entry never completes with damaged
// content: on a mismatch StreamEntry returns an *EntryError wrapping
// ErrCorrupt and writes nothing more. The entry's size is checked too.
//
// It may run concurrently with other StreamEntry calls and with Extract.
func (r *Reader) StreamEntry(name string, w io.Writer) error {
	e, ok := r.entries[name]
	if !ok {
		return fmt.Errorf("%w: no entry %s", ErrCorrupt, name)
	}
	if !r.Streamable(name) {
		return entryErr(name, ErrCorrupt, "cannot be streamed (no stored digest, or not zstd)")
	}
	s := &feed{r: r, e: e, w: w}
	if f, ok := w.(*os.File); ok {
		if n, err := unix.FcntlInt(f.Fd(), unix.F_GETPIPE_SZ, 0); err == nil {
			s.pipe, s.pipeCap = f, int64(n)
		}
	}
	err := s.run()
	switch {
	case err == nil:
		return nil
	case s.writeErr != nil:
		return fmt.Errorf("stream %s: %w", name, s.writeErr)
	case errors.Is(err, ErrCorrupt):
		return &EntryError{Entry: name, Err: err}
	default:
		return entryErr(name, ErrCorrupt, "%v", err)
	}
}

// feed is one StreamEntry.
type feed struct {
	r    *Reader
	e    *entry
	w    io.Writer
	pipe *os.File // w, when it is a pipe: raw frames are spliced into it

	src      *io.SectionReader // the stored bytes
	writeErr error

	// pipeCap is the capacity of pipe in bytes. Decoded frames of at
	// least that size are vmspliced (see vmsplice).
	pipeCap  int64
	pushed   int64  // bytes put into pipe so far
	noSplice bool   // the archive's filesystem cannot splice: raw frames are copied
	rawBuf   []byte // reused for raw blocks that are copied, not spliced
}

// feedJob is one frame, in stream order.
type feedJob struct {
	off, n int64  // the frame's stored bytes: offset in the entry, length
	size   int64  // content size
	raw    []span // raw blocks only: where their payloads are in the entry
	out    []byte // decoded content (compressed frames)
	err    error  // decoding error
	done   chan struct{}
	last   bool // the entry's last frame: gated on the digest
}

// span is a run of stored bytes of an entry.
type span struct{ off, n int64 }

func (s *feed) run() error {
	s.src = io.NewSectionReader(s.r.src, s.e.dataOffset, s.e.compSize)
	if s.e.compSize == 0 {
		if s.e.info.Size != 0 {
			return fmt.Errorf("%w: truncated: 0 of %d bytes", ErrCorrupt, s.e.info.Size)
		}
		return checkDigest(s.e, s.r.src, nil)
	}
	if src, ok := s.r.sequential(); ok {
		return s.runSequential(src)
	}
	// The digest check runs on its own core (started by VerifyAhead, or
	// now); the last frame waits for it.
	check := s.r.ahead.start(s.r, s.e)
	gate := func() error {
		<-check.finished
		return check.err
	}

	// The frames were listed ahead too, so that CRIU's first read does
	// not wait for a walk of every block header.
	<-check.planned
	err := check.planErr
	jobs := make([]*feedJob, len(check.plan)) // fresh: the plan is shared
	for i, j := range check.plan {
		jobs[i] = &feedJob{off: j.off, n: j.n, size: j.size, raw: j.raw, last: j.last}
	}
	if err != nil {
		if errors.Is(err, errFrameLayout) {
			// Not Cedana's frames: verify everything, then decode the
			// stream as a whole.
			if gerr := gate(); gerr != nil {
				return gerr
			}
			return s.decodeStream()
		}
		return err
	}
	return s.decodeAndWrite(jobs, gate)
}

// checkDigest compares the digests of an entry's stored bytes with the
// manifest's, as a restore checks them (see checksFor). It gives up with
// errStopped once stop is closed.
//
// It hashes a read-only mapping of the bytes rather than copies of them:
// on a 1 GiB incompressible entry that made a streamed restore 0.18 s
// faster (medians of 5 interleaved runs: 1.036 s against 1.220 s). A file
// truncated under the mapping is reported as an error (SetPanicOnFault),
// and where mapping fails the bytes are read instead.
func checkDigest(e *entry, f io.ReaderAt, stop <-chan struct{}) error {
	d := checksFor(e.info, false)
	if err := hashStored(e, f, stop, func(b []byte) { d.Write(b) }); err != nil {
		return err
	}
	return d.verify(e.info)
}

// hashStored passes the stored bytes of e to add, in order, in pieces of
// at most frameSize bytes.
func hashStored(e *entry, src io.ReaderAt, stop <-chan struct{}, add func([]byte)) (err error) {
	f, _ := src.(*os.File) // a local file is hashed through a mapping
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	if e.compSize > 0 && f != nil {
		page := int64(os.Getpagesize())
		start := e.dataOffset &^ (page - 1)
		if m, merr := unix.Mmap(int(f.Fd()), start, int(e.dataOffset-start+e.compSize), unix.PROT_READ, unix.MAP_SHARED); merr == nil {
			defer unix.Munmap(m)
			_ = unix.Madvise(m, unix.MADV_SEQUENTIAL)
			defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("%w: archive changed while being read: %v", ErrCorrupt, p)
				}
			}()
			data := m[e.dataOffset-start:]
			for off := 0; off < len(data); off += frameSize {
				if stopped() {
					return errStopped
				}
				add(data[off:min(len(data), off+frameSize)])
			}
			return nil
		}
	}
	sec := io.NewSectionReader(src, e.dataOffset, e.compSize)
	buf := make([]byte, min(frameSize, max(e.compSize, 1)))
	for off := int64(0); off < e.compSize; {
		if stopped() {
			return errStopped
		}
		n, err := sec.ReadAt(buf[:min(int64(len(buf)), e.compSize-off)], off)
		if n == 0 && err != nil {
			return fmt.Errorf("%w: read stored bytes: %v", ErrCorrupt, err)
		}
		add(buf[:n])
		off += int64(n)
	}
	return nil
}

var errStopped = errors.New("archive closed")

// VerifyAhead starts checking the stored digest of entry name in the
// background, so that a later StreamEntry of it finds the check done (or
// well under way) instead of starting it when its consumer asks for the
// entry. It does nothing for an entry that is not Streamable. Close stops
// the checks still running.
//
// For a SequentialSource it does nothing: StreamEntry checks the digest in
// its single pass, and a check ahead would read every byte once more.
func (r *Reader) VerifyAhead(name string) {
	if _, seq := r.sequential(); seq {
		return
	}
	if e, ok := r.entries[name]; ok && r.Streamable(name) {
		r.ahead.start(r, e)
	}
}

// Verified waits for the digest check of entry name (starting it if
// VerifyAhead did not) and returns its result: nil once the stored bytes
// match the manifest, an error wrapping ErrCorrupt otherwise.
func (r *Reader) Verified(name string) error {
	e, ok := r.entries[name]
	if !ok || !r.Streamable(name) {
		return fmt.Errorf("%w: %s cannot be checked ahead (no stored digest, or not zstd)", ErrCorrupt, name)
	}
	j := r.ahead.start(r, e)
	<-j.finished
	if j.err != nil && !errors.Is(j.err, errStopped) {
		return &EntryError{Entry: name, Err: j.err}
	}
	return j.err
}

// verifications are the digest checks of a Reader's entries, each run
// once, in the background.
type verifications struct {
	mu   sync.Mutex
	jobs map[*entry]*verification
	done chan struct{} // closed by stop
	wg   sync.WaitGroup
}

type verification struct {
	finished chan struct{}
	err      error

	// The entry's frames as split lists them (or why it cannot): ready
	// once planned is closed; read-only.
	planned chan struct{}
	plan    []*feedJob
	planErr error
}

// start launches the check of e unless it exists already.
func (v *verifications) start(r *Reader, e *entry) *verification {
	v.mu.Lock()
	defer v.mu.Unlock()
	if j, ok := v.jobs[e]; ok {
		return j
	}
	if v.jobs == nil {
		v.jobs, v.done = map[*entry]*verification{}, make(chan struct{})
	}
	j := &verification{finished: make(chan struct{}), planned: make(chan struct{})}
	v.jobs[e] = j
	select {
	case <-v.done: // closed already
		j.err, j.planErr = errStopped, errStopped
		close(j.finished)
		close(j.planned)
		return j
	default:
	}
	v.wg.Go(func() {
		defer close(j.planned)
		s := &feed{r: r, e: e, src: io.NewSectionReader(r.src, e.dataOffset, e.compSize)}
		j.plan, j.planErr = s.split()
	})
	v.wg.Go(func() {
		defer close(j.finished)
		j.err = checkDigest(e, r.src, v.done)
	})
	return j
}

// stop ends the checks still running and waits for them.
func (v *verifications) stop() {
	v.mu.Lock()
	if v.done == nil {
		v.jobs, v.done = map[*entry]*verification{}, make(chan struct{})
	}
	select {
	case <-v.done:
	default:
		close(v.done)
	}
	v.mu.Unlock()
	v.wg.Wait()
}

// split cuts the stored stream into frames, reading only their headers.
// It returns errFrameLayout when the stream is not made of frames that
// declare a content size of at most frameSize, and an error wrapping
// ErrCorrupt for a damaged stream or one that declares more content than
// the manifest.
func (s *feed) split() ([]*feedJob, error) {
	var jobs []*feedJob
	var total int64
	hr := &headerReader{r: s.src}
	size := s.src.Size()
	// Cedana's frames hold frameSize bytes each but the last. A stream cut
	// much finer (another writer, or a hostile one made of empty frames)
	// is decoded as a whole instead, so that this list stays small.
	maxFrames := s.e.info.Size/(64<<10) + 16
	for off := int64(0); off < size; {
		if int64(len(jobs)) == maxFrames {
			return nil, errFrameLayout
		}
		hdr, err := hr.at(off, min(maxFrameHeaderLen, int(size-off)))
		if err != nil {
			return nil, err
		}
		if len(hdr) >= 4 && binary.LittleEndian.Uint32(hdr)&skippableMagicMask == skippableMagic {
			return nil, errFrameLayout
		}
		fh, err := parseFrameHeader(hdr)
		if err != nil {
			return nil, fmt.Errorf("%w: %v at compressed offset %d", ErrCorrupt, err, off)
		}
		if fh.contentSize < 0 || fh.contentSize > frameSize {
			return nil, errFrameLayout
		}
		j, err := walkBlocks(hr, off, size, fh)
		if errors.Is(err, errFrameLayout) {
			return nil, err
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v at compressed offset %d", ErrCorrupt, err, off)
		}
		if total += fh.contentSize; total > s.e.info.Size {
			return nil, fmt.Errorf("%w: decompresses to more than the %d bytes declared", ErrCorrupt, s.e.info.Size)
		}
		jobs = append(jobs, j)
		off += j.n
	}
	if total != s.e.info.Size {
		return nil, fmt.Errorf("%w: truncated: %d of %d bytes", ErrCorrupt, total, s.e.info.Size)
	}
	if len(jobs) > 0 {
		jobs[len(jobs)-1].last = true
	}
	return jobs, nil
}

// headerReader reads small pieces of the stored stream through a window,
// so that walking the block headers of a compressed frame costs a few
// reads, and of a raw frame one small read per 128 KiB block.
type headerReader struct {
	r   *io.SectionReader
	buf []byte
	off int64 // stream offset of buf[0]
}

// at returns n bytes at stream offset off (fewer only at the end).
func (h *headerReader) at(off int64, n int) ([]byte, error) {
	if off >= h.off && off+int64(n) <= h.off+int64(len(h.buf)) {
		return h.buf[off-h.off : off-h.off+int64(n)], nil
	}
	if cap(h.buf) < 4096 {
		h.buf = make([]byte, 4096)
	}
	want := int(min(int64(max(n, 4096)), h.r.Size()-off))
	if want < n {
		return nil, io.ErrUnexpectedEOF
	}
	h.buf = h.buf[:cap(h.buf)]
	if len(h.buf) < want {
		h.buf = make([]byte, want)
	}
	got, err := h.r.ReadAt(h.buf[:want], off)
	if got < want {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	h.buf, h.off = h.buf[:want], off
	return h.buf[:n], nil
}

// maxFrameBlocks bounds the blocks of a frame that split accepts: a
// frame of frameSize bytes needs 32, or 4096 of 1 KiB.
const maxFrameBlocks = 4096

// walkBlocks walks the blocks of the frame at off, whose header is fh,
// and returns it as a job: its length, and for a frame of raw blocks only
// (with exactly the content size the header declares) where their
// payloads are.
func walkBlocks(hr *headerReader, off, size int64, fh frameHeader) (*feedJob, error) {
	pos, content := off+int64(fh.headerLen), int64(0)
	var raw []span
	allRaw := true
	for blocks := 0; ; blocks++ {
		if blocks == maxFrameBlocks {
			return nil, errFrameLayout // see split
		}
		bh, err := hr.at(pos, blockHeaderLen)
		if err != nil {
			return nil, err
		}
		v := uint32(bh[0]) | uint32(bh[1])<<8 | uint32(bh[2])<<16
		last, typ, n := v&1 != 0, (v>>1)&3, int64(v>>3)
		switch typ {
		case 0:
			content += n
			raw = append(raw, span{pos + blockHeaderLen, n})
		case 1: // RLE: one byte repeated n times
			allRaw, n = false, 1
		case 2:
			allRaw = false
		case 3:
			return nil, errors.New("reserved zstd block type")
		}
		if n > maxBlockSize {
			return nil, errors.New("zstd block larger than 128 KiB")
		}
		pos += blockHeaderLen + n
		if pos > size {
			return nil, io.ErrUnexpectedEOF
		}
		if last {
			break
		}
	}
	if fh.checksum {
		pos += frameChecksumLen
	}
	if pos > size {
		return nil, io.ErrUnexpectedEOF
	}
	j := &feedJob{off: off, n: pos - off, size: fh.contentSize}
	if allRaw && content == fh.contentSize && !fh.checksum {
		j.raw = raw
	}
	return j, nil
}

// decodeAndWrite decodes the compressed frames on every core and writes
// all frames in order, the last one only once gate passes.
func (s *feed) decodeAndWrite(jobs []*feedJob, gate func() error) error {
	workers := concurrency(0)
	todo := make(chan *feedJob, len(jobs))
	var wg sync.WaitGroup
	bufs := make(chan []byte, 2*workers+1) // decoded frames in flight
	for range cap(bufs) {
		bufs <- nil
	}
	alloc := s.frameBuffers(jobs)
	defer alloc.free()    // after the workers have stopped (deferred below)
	var held []heldBuffer // vmspliced, perhaps not yet read
	var compressed []*feedJob
	for _, j := range jobs {
		j.done = make(chan struct{})
		if j.raw != nil {
			close(j.done)
		} else {
			compressed = append(compressed, j)
		}
	}
	stop := make(chan struct{})
	defer func() {
		close(stop)
		wg.Wait()
	}()
	for range workers {
		fd, err := frameDecoders.get()
		if err != nil {
			return err
		}
		wg.Go(func() {
			defer frameDecoders.put(fd)
			var comp []byte // this worker's compressed frame
			for {
				// A buffer first, then a job: the oldest job not done
				// always has its buffer, so the writer never waits on
				// a job that waits on the writer.
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
				if int64(cap(comp)) < j.n {
					comp = make([]byte, j.n)
				}
				comp = comp[:j.n]
				if _, err := s.src.ReadAt(comp, j.off); err != nil {
					j.out, j.err = out, fmt.Errorf("read stored bytes: %w", err)
				} else {
					j.out, j.err = decodeFrame(fd, comp, out[:cap(out)], j.size)
				}
				close(j.done)
			}
		})
	}
	for _, j := range compressed {
		todo <- j
	}
	close(todo)

	for _, j := range jobs {
		if j.last {
			if err := gate(); err != nil {
				return err
			}
		}
		<-j.done
		if j.err != nil {
			return fmt.Errorf("%w: frame at compressed offset %d: %v", ErrCorrupt, j.off, j.err)
		}
		var err error
		switch {
		case j.raw != nil:
			err = s.writeRaw(j)
		case alloc.vmsplice.Load() && int64(len(j.out)) >= s.pipeCap:
			err = s.vmsplice(j.out)
			held = append(held, heldBuffer{j.out, s.pushed})
		default:
			err = s.write(j.out)
			bufs <- j.out[:0]
		}
		j.out = nil
		if err != nil {
			s.writeErr = err
			return err
		}
		// A vmspliced buffer is reused only once CRIU has read all of it:
		// when pipeCap bytes went into the pipe after it, none of it can
		// still be there. Held buffers are at least pipeCap long, so at
		// most one stays held here and the workers never lack one.
		for len(held) > 0 && s.pushed-held[0].end >= s.pipeCap {
			bufs <- held[0].b[:0]
			held = held[1:]
		}
	}
	return nil
}

// heldBuffer is a decoded frame vmspliced into the pipe; end is the
// feed's pushed count once all of it was in.
type heldBuffer struct {
	b   []byte
	end int64
}

// frameAllocator gives the decode workers their frame buffers.
type frameAllocator struct {
	// vmsplice: frames may be vmspliced, because every buffer so far is
	// an anonymous mapping outside the Go heap, so that a buffer whose
	// pages a pipe still holds after the feed ends is never reused by
	// the Go allocator (free unmaps them; the pipe keeps its references
	// to the pages, so CRIU still reads the right bytes). It turns false
	// for good when a mapping fails and a heap buffer stands in.
	vmsplice atomic.Bool
	mu       sync.Mutex
	bufs     [][]byte
	// heapSize is the capacity of heap buffers: the largest frame's
	// content size, so that a small entry does not get 4 MiB buffers
	// (zeroing them was half the CPU of fuzzing StreamEntry).
	heapSize int
}

// frameBuffers returns the allocator of the decoded frames of jobs:
// mapped ones when they may be vmspliced into a pipe.
func (s *feed) frameBuffers(jobs []*feedJob) *frameAllocator {
	a := &frameAllocator{heapSize: 1}
	for _, j := range jobs {
		a.heapSize = max(a.heapSize, int(j.size))
	}
	a.vmsplice.Store(s.pipe != nil)
	return a
}

func (a *frameAllocator) get() []byte {
	if a.vmsplice.Load() {
		b, err := unix.Mmap(-1, 0, frameSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err == nil {
			a.mu.Lock()
			a.bufs = append(a.bufs, b)
			a.mu.Unlock()
			return b[:0]
		}
		a.vmsplice.Store(false) // before the heap buffer reaches the writer
	}
	return make([]byte, 0, a.heapSize)
}

func (a *frameAllocator) free() {
	for _, b := range a.bufs {
		_ = unix.Munmap(b)
	}
}

// vmsplice hands the pages of b to the pipe instead of copying them into
// it: CRIU then copies them once, straight into the restored memory. b
// must not change until CRIU has read it (see decodeAndWrite).
func (s *feed) vmsplice(b []byte) error {
	for len(b) > 0 {
		iov := []unix.Iovec{{Base: &b[0]}}
		iov[0].SetLen(len(b))
		n, err := unix.Vmsplice(int(s.pipe.Fd()), iov, 0)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		}
		s.pushed += int64(n)
		b = b[n:]
	}
	return nil
}

// writeRaw writes the content of a frame of raw blocks: the payload of
// each block, spliced from the archive file when w is a pipe.
func (s *feed) writeRaw(j *feedJob) error {
	for _, sp := range j.raw {
		if err := s.writeStored(sp); err != nil {
			return err
		}
	}
	return nil
}

// writeStored writes the stored bytes sp of the entry: spliced from the
// archive file into w when w is a pipe, else read and written.
func (s *feed) writeStored(sp span) error {
	foff, left := s.e.dataOffset+sp.off, sp.n
	if f, at, done := s.spliceSource(foff, left); f != nil {
		rest, err := s.splice(f, at, left)
		done()
		if err != nil {
			return err
		}
		foff, left = foff+left-rest, rest
	}
	if left == 0 {
		return nil
	}
	// Raw blocks of an archive that is not a local file (a store) come
	// through here, frame after frame: one buffer, not one allocation each.
	if int64(cap(s.rawBuf)) < left {
		s.rawBuf = make([]byte, left)
	}
	b := s.rawBuf[:left]
	if _, err := s.r.src.ReadAt(b, foff); err != nil {
		return fmt.Errorf("%w: read stored bytes: %v", ErrCorrupt, err)
	}
	return s.write(b)
}

// FileAter is an archive source whose bytes lie in local files (a
// deduplicated checkpoint's chunks): FileAt returns a file holding the n
// bytes at off, from offset at, for a restore to splice them from the page
// cache; false when they do not lie in one file. The caller closes f.
type FileAter interface {
	FileAt(off, n int64) (f *os.File, at int64, ok bool)
}

// spliceSource returns the file and offset holding the n stored bytes at
// off, when they can be spliced into the pipe: the archive file itself,
// or a file of a FileAter source. done releases it.
func (s *feed) spliceSource(off, n int64) (f *os.File, at int64, done func()) {
	switch {
	case s.pipe == nil || s.noSplice:
	case s.r.f != nil:
		return s.r.f, off, func() {}
	default:
		if fa, ok := s.r.src.(FileAter); ok {
			if f, at, ok := fa.FileAt(off, n); ok {
				return f, at, func() { f.Close() }
			}
		}
	}
	return nil, 0, nil
}

// splice moves up to n bytes of f from offset off into the pipe and
// returns how many it could not (splice unsupported: the caller copies).
func (s *feed) splice(f *os.File, off, n int64) (int64, error) {
	for n > 0 && !s.noSplice {
		k, err := unix.Splice(int(f.Fd()), &off, int(s.pipe.Fd()), nil, int(n), unix.SPLICE_F_MOVE|unix.SPLICE_F_MORE)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EINVAL || err == unix.ENOSYS:
			s.noSplice = true // copy the rest, and from now on
		case err != nil:
			return n, err
		case k == 0:
			return n, io.ErrUnexpectedEOF
		default:
			n -= k
			s.pushed += k
		}
	}
	return n, nil
}

func (s *feed) write(b []byte) error {
	n, err := s.w.Write(b)
	s.pushed += int64(n)
	return err
}

// decodeStream decodes the verified stream as a whole (not Cedana's frame
// layout), never producing more than the declared size.
func (s *feed) decodeStream() error {
	dec := &decoders{}
	defer dec.close()
	rd, err := dec.open(methodZstd, io.NewSectionReader(s.src, 0, s.src.Size()))
	if err != nil {
		return err
	}
	n, err := io.Copy(writerFunc(func(b []byte) (int, error) {
		if err := s.write(b); err != nil {
			s.writeErr = err
			return 0, err
		}
		return len(b), nil
	}), &sizeGuard{r: rd, left: s.e.info.Size})
	if err != nil {
		return err
	}
	if n != s.e.info.Size {
		return fmt.Errorf("%w: truncated: %d of %d bytes", ErrCorrupt, n, s.e.info.Size)
	}
	return nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }
