package archive

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"sync"
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
// memory pages from a pipe during a restore). The bytes reach w in order,
// decoded on several cores; the SHA-256 and CRC-32C of the stored bytes
// are computed as they are read and compared with the manifest before the
// last frame is written, so a consumer that needs the whole entry never
// completes with damaged content: on a mismatch StreamEntry returns an
// *EntryError wrapping ErrCorrupt and writes nothing more. Every frame's
// content checksum and the entry's size are checked as well.
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
	hr := &hashingReaderAt{r: io.NewSectionReader(r.f, e.dataOffset, e.compSize), sha: sha256.New()}
	hr.w = hr.sha
	if e.info.StoredCRC32C != "" {
		hr.crc = crc32.New(castagnoli)
		hr.w = io.MultiWriter(hr.sha, hr.crc)
	}
	src := io.NewSectionReader(hr, 0, e.compSize)
	gate := func() error {
		sha, crc, err := hr.finish(e.compSize)
		if err != nil {
			return fmt.Errorf("%w: read stored bytes: %v", ErrCorrupt, err)
		}
		if e.info.StoredCRC32C != "" && crc != e.info.StoredCRC32C {
			return fmt.Errorf("%w: stored bytes changed (CRC-32C %s, manifest says %s)", ErrCorrupt, crc, e.info.StoredCRC32C)
		}
		if sha != e.info.StoredSHA256 {
			return fmt.Errorf("%w: stored bytes changed (SHA-256 %s, manifest says %s)", ErrCorrupt, sha, e.info.StoredSHA256)
		}
		return nil
	}
	dec := &decoders{}
	defer dec.close()
	pipe := newPipeline(frameSize, chunkDepth)
	var size int64
	var writeErr error
	err := pipe.run(context.Background(), func(f *flow) error {
		return decodeFrames(f, src, dec, concurrency(0), e.info.Size, gate)
	}, func(b []byte) error {
		size += int64(len(b))
		if _, err := w.Write(b); err != nil {
			writeErr = err
			return err
		}
		return nil
	})
	switch {
	case writeErr != nil:
		return fmt.Errorf("stream %s: %w", name, writeErr)
	case errors.Is(err, ErrCorrupt):
		return &EntryError{Entry: name, Err: err}
	case err != nil:
		return entryErr(name, ErrCorrupt, "cannot decompress: %w", err)
	case size != e.info.Size:
		return entryErr(name, ErrCorrupt, "truncated: %d of %d bytes", size, e.info.Size)
	}
	return nil
}

// hashingReaderAt digests the bytes of r in order as a frame splitter
// reads them: reads may overlap what was already read (the splitter reads
// ahead and then starts the next frame over), and never leave a gap in
// strict mode; finish digests anything not read yet.
type hashingReaderAt struct {
	r   io.ReaderAt
	mu  sync.Mutex
	sha hash.Hash
	crc hash.Hash32 // nil unless the manifest records a CRC
	w   io.Writer   // sha, and crc if any
	pos int64       // bytes digested so far
}

func (h *hashingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := h.r.ReadAt(p, off)
	h.mu.Lock()
	defer h.mu.Unlock()
	if off > h.pos {
		if gerr := h.digestRange(off); gerr != nil {
			return n, gerr
		}
	}
	if end := off + int64(n); end > h.pos {
		h.w.Write(p[h.pos-off : n])
		h.pos = end
	}
	return n, err
}

// digestRange reads and digests the bytes from pos up to end.
func (h *hashingReaderAt) digestRange(end int64) error {
	_, err := io.Copy(h.w, io.NewSectionReader(h.r, h.pos, end-h.pos))
	if err == nil {
		h.pos = end
	}
	return err
}

// finish digests up to size and returns the digests in the manifest's
// form.
func (h *hashingReaderAt) finish(size int64) (sha, crc string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if size > h.pos {
		if err := h.digestRange(size); err != nil {
			return "", "", err
		}
	}
	if h.crc != nil {
		crc = fmt.Sprintf("%08x", h.crc.Sum32())
	}
	return hex.EncodeToString(h.sha.Sum(nil)), crc, nil
}
