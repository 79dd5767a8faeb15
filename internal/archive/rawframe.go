package archive

import (
	"encoding/binary"
	"math"
)

// Incompressible content (encrypted or random data, already-compressed
// buffers) is common in process memory, and zstd spends more time failing
// to compress it than on anything else: on the benchmark's random half,
// SpeedDefault took 1.6 CPU-s per GiB to emit raw blocks in the end. The
// writer therefore looks at each frame first and, when it is clearly
// incompressible, writes it as a zstd frame of raw blocks itself, at the
// cost of a copy. Any zstd decoder reads such frames.

// incompressible reports whether a frame of memory is not worth giving
// to the compressor: the first 256 bytes of every 4 KiB page, taken
// together, have an order-0 entropy within 0.5% of 8 bits per byte, and
// no two pages start with the same 16 bytes. The sample sees zero and
// text pages and page-sized repetitions, which are what compresses in
// process memory; data that only LZ matches at other offsets would find
// is rare there, and storing it raw costs size, never correctness.
func incompressible(b []byte) bool {
	const page, probe = 4096, 256
	if len(b) < 64<<10 {
		return false // small frames are cheap to compress anyway
	}
	var hist [256]uint32
	seen := make(map[[16]byte]struct{}, len(b)/page)
	n := 0
	for off := 0; off+probe <= len(b); off += page {
		s := b[off : off+probe]
		for _, c := range s {
			hist[c]++
		}
		n += probe
		var k [16]byte
		copy(k[:], s)
		if _, dup := seen[k]; dup {
			return false
		}
		seen[k] = struct{}{}
	}
	return entropy(&hist, n) > 7.96
}

// entropy returns the order-0 entropy in bits per byte of a histogram of
// n bytes.
func entropy(hist *[256]uint32, n int) float64 {
	var h float64
	inv := 1 / float64(n)
	for _, c := range hist {
		if c != 0 {
			p := float64(c) * inv
			h -= p * math.Log2(p)
		}
	}
	return h
}

// appendRawFrame appends to dst a zstd frame (RFC 8878) holding src in
// raw blocks, with its content size in the header, exactly what a zstd
// encoder configured like Cedana's would produce for data it cannot
// compress.
func appendRawFrame(dst, src []byte) []byte {
	// Frame header descriptor: 4-byte content size (FCS flag 2), single
	// segment (no window descriptor), no checksum, no dictionary.
	dst = binary.LittleEndian.AppendUint32(dst, zstdFrameMagic)
	dst = append(dst, 2<<6|1<<5)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(src)))
	for first := true; first || len(src) > 0; first = false {
		n := min(len(src), maxBlockSize)
		hdr := uint32(n) << 3 // block type 0: raw
		if n == len(src) {
			hdr |= 1 // last block
		}
		dst = append(dst, byte(hdr), byte(hdr>>8), byte(hdr>>16))
		dst = append(dst, src[:n]...)
		src = src[n:]
	}
	return dst
}
