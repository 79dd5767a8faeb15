package archive

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"runtime/debug"
	"sync"

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
// The stored bytes are mapped, not copied. Their SHA-256 is computed on
// one goroutine while the frames are decoded on the others and written to
// w in order; frames of raw blocks (incompressible memory) are spliced
// from the archive's page cache straight into w when w is a pipe. The last
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
		s.pipe = f
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
	pipe *os.File // w, when it is a file (a pipe): raw frames are spliced

	data     []byte // the stored bytes, mapped
	writeErr error
	written  int64
}

// feedJob is one frame, in stream order.
type feedJob struct {
	comp []byte // the frame's stored bytes (a slice of the mapping)
	off  int64  // its offset in the entry
	size int64  // content size
	raw  bool   // made of raw blocks only: its content is in the mapping
	out  []byte // decoded content (compressed frames)
	err  error  // decoding error
	done chan struct{}
	last bool // the entry's last frame: gated on the digest
}

func (s *feed) run() (err error) {
	if s.e.compSize == 0 {
		if s.e.info.Size != 0 {
			return fmt.Errorf("%w: truncated: 0 of %d bytes", ErrCorrupt, s.e.info.Size)
		}
		return checkDigest(s.e, nil, nil)
	}
	data, unmap, err := mapRange(s.r.f, s.e.dataOffset, s.e.compSize)
	if err != nil {
		return err
	}
	defer unmap()
	s.data = data
	// A truncated archive file makes the mapping fault: report it as an
	// error rather than crashing.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: archive changed while being read: %v", ErrCorrupt, p)
		}
	}()

	// The digest check runs on its own core (started by VerifyAhead, or
	// now); the last frame waits for it.
	check := s.r.ahead.start(s.r, s.e)
	gate := func() error {
		<-check.finished
		return check.err
	}

	jobs, err := s.split()
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

// checkDigest compares the SHA-256 of an entry's mapped stored bytes
// with the manifest's (and their CRC-32C, which format 1 archives may
// record). It gives up with errStopped once stop is closed.
func checkDigest(e *entry, data []byte, stop <-chan struct{}) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: archive changed while being read: %v", ErrCorrupt, p)
		}
	}()
	sha := sha256.New()
	var crc uint32
	for off := 0; off < len(data); off += frameSize {
		select {
		case <-stop:
			return errStopped
		default:
		}
		chunk := data[off:min(len(data), off+frameSize)]
		sha.Write(chunk)
		if e.info.StoredCRC32C != "" {
			crc = crc32.Update(crc, castagnoli, chunk)
		}
	}
	if got := hex.EncodeToString(sha.Sum(nil)); got != e.info.StoredSHA256 {
		return fmt.Errorf("%w: stored bytes changed (SHA-256 %s, manifest says %s)", ErrCorrupt, got, e.info.StoredSHA256)
	}
	if want := e.info.StoredCRC32C; want != "" {
		if got := fmt.Sprintf("%08x", crc); got != want {
			return fmt.Errorf("%w: stored bytes changed (CRC-32C %s, manifest says %s)", ErrCorrupt, got, want)
		}
	}
	return nil
}

var errStopped = errors.New("archive closed")

// VerifyAhead starts checking the stored digest of entry name in the
// background, so that a later StreamEntry of it finds the check done (or
// well under way) instead of starting it when its consumer asks for the
// entry. It does nothing for an entry that is not Streamable. Close stops
// the checks still running.
func (r *Reader) VerifyAhead(name string) {
	if e, ok := r.entries[name]; ok && r.Streamable(name) {
		r.ahead.start(r, e)
	}
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
	j := &verification{finished: make(chan struct{})}
	v.jobs[e] = j
	select {
	case <-v.done: // closed already
		j.err = errStopped
		close(j.finished)
		return j
	default:
	}
	v.wg.Go(func() {
		defer close(j.finished)
		if e.compSize == 0 {
			j.err = checkDigest(e, nil, v.done)
			return
		}
		data, unmap, err := mapRange(r.f, e.dataOffset, e.compSize)
		if err != nil {
			j.err = err
			return
		}
		defer unmap()
		j.err = checkDigest(e, data, v.done)
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

// split cuts the mapped stream into frames. It returns errFrameLayout
// when the stream is not made of frames that declare a content size of at
// most frameSize, and an error wrapping ErrCorrupt for a damaged stream or
// one that declares more content than the manifest.
func (s *feed) split() ([]*feedJob, error) {
	var jobs []*feedJob
	var total int64
	data := s.data
	for off := 0; off < len(data); {
		fh, err := parseFrameHeader(data[off:min(len(data), off+maxFrameHeaderLen)])
		if err != nil {
			if len(data)-off >= 4 && binary.LittleEndian.Uint32(data[off:])&skippableMagicMask == skippableMagic {
				return nil, errFrameLayout
			}
			return nil, fmt.Errorf("%w: %v at compressed offset %d", ErrCorrupt, err, off)
		}
		if fh.contentSize < 0 || fh.contentSize > frameSize {
			return nil, errFrameLayout
		}
		n, raw, err := walkBlocks(data[off:], fh)
		if err != nil {
			return nil, fmt.Errorf("%w: %v at compressed offset %d", ErrCorrupt, err, off)
		}
		if total += fh.contentSize; total > s.e.info.Size {
			return nil, fmt.Errorf("%w: decompresses to more than the %d bytes declared", ErrCorrupt, s.e.info.Size)
		}
		jobs = append(jobs, &feedJob{comp: data[off : off+n], off: int64(off), size: fh.contentSize, raw: raw})
		off += n
	}
	if total != s.e.info.Size {
		return nil, fmt.Errorf("%w: truncated: %d of %d bytes", ErrCorrupt, total, s.e.info.Size)
	}
	if len(jobs) > 0 {
		jobs[len(jobs)-1].last = true
	}
	return jobs, nil
}

// walkBlocks returns the length of the frame at the start of b, whose
// header is fh, and whether all its blocks are raw with exactly the
// content size the header declares.
func walkBlocks(b []byte, fh frameHeader) (n int, raw bool, err error) {
	pos, content := fh.headerLen, int64(0)
	raw = true
	for {
		if pos+blockHeaderLen > len(b) {
			return 0, false, io.ErrUnexpectedEOF
		}
		v := uint32(b[pos]) | uint32(b[pos+1])<<8 | uint32(b[pos+2])<<16
		last, typ, size := v&1 != 0, (v>>1)&3, int(v>>3)
		switch typ {
		case 0:
			content += int64(size)
		case 1: // RLE: one byte repeated size times
			raw, size = false, 1
		case 2:
			raw = false
		case 3:
			return 0, false, errors.New("reserved zstd block type")
		}
		if size > maxBlockSize {
			return 0, false, errors.New("zstd block larger than 128 KiB")
		}
		pos += blockHeaderLen + size
		if last {
			break
		}
	}
	if fh.checksum {
		pos += frameChecksumLen
	}
	if pos > len(b) {
		return 0, false, io.ErrUnexpectedEOF
	}
	return pos, raw && content == fh.contentSize, nil
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
	var compressed []*feedJob
	for _, j := range jobs {
		j.done = make(chan struct{})
		if j.raw {
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
			defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
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
					out = make([]byte, frameSize)
				}
				func() {
					defer func() {
						if p := recover(); p != nil {
							j.err = fmt.Errorf("%w: archive changed while being read: %v", ErrCorrupt, p)
						}
					}()
					j.out, j.err = decodeFrame(fd, j.comp, out[:cap(out)], j.size)
				}()
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
		if j.raw {
			err = s.writeRaw(j)
		} else {
			err = s.write(j.out)
			bufs <- j.out[:0]
			j.out = nil
		}
		if err != nil {
			s.writeErr = err
			return err
		}
	}
	return nil
}

// writeRaw writes the content of a frame of raw blocks: the payload of
// each block, spliced from the archive file when w is a pipe.
func (s *feed) writeRaw(j *feedJob) error {
	fh, _ := parseFrameHeader(j.comp)
	for pos := fh.headerLen; ; {
		v := uint32(j.comp[pos]) | uint32(j.comp[pos+1])<<8 | uint32(j.comp[pos+2])<<16
		size := int(v >> 3)
		start := pos + blockHeaderLen
		if err := s.writeStored(j.off+int64(start), j.comp[start:start+size]); err != nil {
			return err
		}
		if v&1 != 0 {
			return nil
		}
		pos = start + size
	}
}

// writeStored writes b, the stored bytes at offset off of the entry.
func (s *feed) writeStored(off int64, b []byte) error {
	if s.pipe == nil || len(b) == 0 {
		return s.write(b)
	}
	foff := s.e.dataOffset + off
	for left := len(b); left > 0; {
		n, err := unix.Splice(int(s.r.f.Fd()), &foff, int(s.pipe.Fd()), nil, left, unix.SPLICE_F_MOVE|unix.SPLICE_F_MORE)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EINVAL || err == unix.ENOSYS {
			// No splice here (e.g. w is not a pipe): copy the rest.
			done := len(b) - left
			return s.write(b[done:])
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		left -= int(n)
		s.written += n
	}
	return nil
}

func (s *feed) write(b []byte) error {
	n, err := s.w.Write(b)
	s.written += int64(n)
	return err
}

// decodeStream decodes the verified stream as a whole (not Cedana's frame
// layout), never producing more than the declared size.
func (s *feed) decodeStream() error {
	dec := &decoders{}
	defer dec.close()
	rd, err := dec.open(methodZstd, bytes.NewReader(s.data))
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

// mapRange maps size bytes of f from offset off, read-only, and advises
// the kernel that they will be read once, in order.
func mapRange(f *os.File, off, size int64) ([]byte, func(), error) {
	page := int64(os.Getpagesize())
	start := off &^ (page - 1)
	m, err := unix.Mmap(int(f.Fd()), start, int(off-start+size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("map archive: %w", err)
	}
	_ = unix.Madvise(m, unix.MADV_SEQUENTIAL)
	_ = unix.Madvise(m, unix.MADV_WILLNEED)
	return m[off-start:], func() { unix.Munmap(m) }, nil
}
