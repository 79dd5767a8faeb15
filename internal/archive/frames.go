package archive

import (
	"bufio"
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

// frameSplitter cuts a zstd stream into whole frames.
type frameSplitter struct {
	r   *bufio.Reader
	off int64 // bytes consumed from the stream
	// maxContent is the largest frame content size accepted; maxFrame the
	// largest compressed frame.
	maxContent, maxFrame int
}

// next appends the next frame of the stream to dst[:0] and returns it
// with its content size. It skips skippable frames, returns io.EOF at the
// end of the stream, and errFrameLayout, having consumed nothing, if the
// next frame has no content size or exceeds a limit. Other errors mean
// the stream is damaged.
func (s *frameSplitter) next(dst []byte) ([]byte, int64, error) {
	for {
		hdr, err := s.r.Peek(maxFrameHeaderLen)
		if len(hdr) == 0 && err == io.EOF {
			return dst, 0, io.EOF
		}
		if len(hdr) >= 8 && binary.LittleEndian.Uint32(hdr)&skippableMagicMask == skippableMagic {
			n := int64(binary.LittleEndian.Uint32(hdr[4:])) + 8
			if d, err := s.r.Discard(int(min(n, 1<<31))); err != nil || int64(d) != n {
				return dst, 0, io.ErrUnexpectedEOF
			}
			s.off += n
			continue
		}
		fh, err := parseFrameHeader(hdr)
		if err != nil {
			return dst, 0, err
		}
		if fh.contentSize < 0 || fh.contentSize > int64(s.maxContent) {
			return dst, 0, errFrameLayout
		}
		dst, err = s.readFrame(dst[:0], fh)
		if err != nil {
			return dst, 0, err
		}
		s.off += int64(len(dst))
		return dst, fh.contentSize, nil
	}
}

// readFrame reads the frame whose header is fh, block by block.
func (s *frameSplitter) readFrame(dst []byte, fh frameHeader) ([]byte, error) {
	var err error
	if dst, err = s.read(dst, fh.headerLen); err != nil {
		return dst, err
	}
	for {
		if dst, err = s.read(dst, blockHeaderLen); err != nil {
			return dst, err
		}
		bh := dst[len(dst)-blockHeaderLen:]
		v := uint32(bh[0]) | uint32(bh[1])<<8 | uint32(bh[2])<<16
		last, typ, size := v&1 != 0, (v>>1)&3, int(v>>3)
		switch typ {
		case 1: // RLE: one byte repeated size times
			size = 1
		case 3:
			return dst, errors.New("reserved zstd block type")
		}
		if size > maxBlockSize {
			return dst, errors.New("zstd block larger than 128 KiB")
		}
		if dst, err = s.read(dst, size); err != nil {
			return dst, err
		}
		if last {
			break
		}
	}
	if fh.checksum {
		dst, err = s.read(dst, frameChecksumLen)
	}
	return dst, err
}

// read appends the next n bytes of the stream to dst, within maxFrame.
func (s *frameSplitter) read(dst []byte, n int) ([]byte, error) {
	if len(dst)+n > s.maxFrame {
		return dst, errFrameLayout
	}
	l := len(dst)
	dst = slices.Grow(dst, n)[:l+n]
	if _, err := io.ReadFull(s.r, dst[l:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return dst[:l], err
	}
	return dst, nil
}
