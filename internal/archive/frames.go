package archive

import (
	"encoding/binary"
	"errors"
	"io"
	"slices"
)

// Zstandard frame layout (RFC 8878, section 3.1), as far as needed to cut a
// stream into whole frames without decoding it.
const (
	zstdFrameMagic     = 0xFD2FB528
	skippableMagic     = 0x184D2A50 // low 4 bits are free
	skippableMagicMask = 0xFFFFFFF0
	maxFrameHeaderLen  = 18 // magic 4 + descriptor 1 + window 1 + dict ID 4 + content size 8
	blockHeaderLen     = 3
	frameChecksumLen   = 4
	maxBlockSize       = 128 << 10
)

// errFrameLayout means the stream is not made of frames this reader can
// decode independently; the caller falls back to decoding it as a stream.
var errFrameLayout = errors.New("frame not suitable for parallel decoding")

// frameHeader is the part of a zstd frame header the splitter needs.
type frameHeader struct {
	headerLen   int   // bytes from the magic number to the first block
	contentSize int64 // -1 when the header does not record it
	checksum    bool  // a 4-byte content checksum follows the last block
}

// parseFrameHeader parses the zstd frame header at the start of b, which
// holds maxFrameHeaderLen bytes or the rest of the stream.
func parseFrameHeader(b []byte) (frameHeader, error) {
	if len(b) < 5 || binary.LittleEndian.Uint32(b) != zstdFrameMagic {
		return frameHeader{}, errors.New("bad zstd frame magic")
	}
	fhd := b[4]
	if fhd&0x08 != 0 {
		return frameHeader{}, errors.New("reserved bit set in zstd frame header")
	}
	single := fhd&0x20 != 0
	h := frameHeader{headerLen: 5, contentSize: -1, checksum: fhd&0x04 != 0}
	if !single {
		h.headerLen++ // window descriptor
	}
	h.headerLen += [4]int{0, 1, 2, 4}[fhd&0x03] // dictionary ID
	fcsLen := [4]int{0, 2, 4, 8}[fhd>>6]
	if fcsLen == 0 && single {
		fcsLen = 1
	}
	if len(b) < h.headerLen+fcsLen {
		return frameHeader{}, io.ErrUnexpectedEOF
	}
	fcs := b[h.headerLen : h.headerLen+fcsLen]
	switch fcsLen {
	case 1:
		h.contentSize = int64(fcs[0])
	case 2:
		h.contentSize = int64(binary.LittleEndian.Uint16(fcs)) + 256
	case 4:
		h.contentSize = int64(binary.LittleEndian.Uint32(fcs))
	case 8:
		if v := binary.LittleEndian.Uint64(fcs); v <= 1<<62 {
			h.contentSize = int64(v)
		}
	}
	h.headerLen += fcsLen
	return h, nil
}

// frameSplitter cuts a zstd stream into whole frames, reading each frame
// straight into the caller's buffer with positioned reads.
type frameSplitter struct {
	r    io.ReaderAt
	size int64 // length of the stream
	off  int64 // offset of the next frame
	// maxContent is the largest frame content size accepted; maxFrame the
	// largest compressed frame.
	maxContent, maxFrame int
	guess                int // how much to read for the next frame

	buf  []byte // the frame being cut
	have int    // bytes of the stream read into buf, from off
}

// next reads the next frame of the stream into dst (reusing its
// capacity) and returns it with its content size. It skips skippable
// frames, returns io.EOF at the end of the stream, and errFrameLayout if
// the next frame has no content size or exceeds a limit, leaving off at
// that frame. Other errors mean the stream is damaged.
func (s *frameSplitter) next(dst []byte) ([]byte, int64, error) {
	for {
		if s.off >= s.size {
			return dst, 0, io.EOF
		}
		s.buf, s.have = dst[:0], 0
		if err := s.ensure(min(maxFrameHeaderLen, int(s.size-s.off))); err != nil {
			return dst, 0, err
		}
		hdr := s.buf[:s.have]
		if len(hdr) >= 8 && binary.LittleEndian.Uint32(hdr)&skippableMagicMask == skippableMagic {
			if s.off += int64(binary.LittleEndian.Uint32(hdr[4:])) + 8; s.off > s.size {
				return dst, 0, io.ErrUnexpectedEOF
			}
			continue
		}
		fh, err := parseFrameHeader(hdr)
		if err != nil {
			return dst, 0, err
		}
		if fh.contentSize < 0 || fh.contentSize > int64(s.maxContent) {
			return dst, 0, errFrameLayout
		}
		n, err := s.frameLen(fh)
		if err != nil {
			return dst, 0, err
		}
		s.off += int64(n)
		s.guess = n + n/8 + 4096
		return s.buf[:n], fh.contentSize, nil
	}
}

// frameLen walks the blocks of the frame whose header is fh and returns
// the frame's length.
func (s *frameSplitter) frameLen(fh frameHeader) (int, error) {
	pos := fh.headerLen
	for {
		if err := s.ensure(pos + blockHeaderLen); err != nil {
			return 0, err
		}
		bh := s.buf[pos : pos+blockHeaderLen]
		v := uint32(bh[0]) | uint32(bh[1])<<8 | uint32(bh[2])<<16
		last, typ, size := v&1 != 0, (v>>1)&3, int(v>>3)
		switch typ {
		case 1: // RLE: one byte repeated size times
			size = 1
		case 3:
			return 0, errors.New("reserved zstd block type")
		}
		if size > maxBlockSize {
			return 0, errors.New("zstd block larger than 128 KiB")
		}
		pos += blockHeaderLen + size
		if last {
			break
		}
	}
	if fh.checksum {
		pos += frameChecksumLen
	}
	return pos, s.ensure(pos)
}

// ensure reads until buf holds at least n bytes of the frame (more if
// the guess says so), within maxFrame and the end of the stream.
func (s *frameSplitter) ensure(n int) error {
	if n <= s.have {
		return nil
	}
	if n > s.maxFrame {
		return errFrameLayout
	}
	left := s.size - s.off
	if int64(n) > left {
		return io.ErrUnexpectedEOF
	}
	want := int(min(int64(max(n, s.guess, s.have+64<<10)), int64(s.maxFrame), left))
	s.buf = slices.Grow(s.buf[:s.have], want-s.have)[:want]
	got, err := s.r.ReadAt(s.buf[s.have:], s.off+int64(s.have))
	if s.have += got; s.have < want {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}
