package archive

import (
	"compress/flate"
	"fmt"
	"io"
	"runtime"

	"github.com/klauspost/compress/zstd"
)

// Zip compression methods a reader accepts. Writers use methodZstd for
// content and Deflate for the manifest (so that `unzip -p` can show it).
const (
	methodStore   = 0
	methodDeflate = 8
	methodZstd    = zstd.ZipMethodWinZip // 93
)

// maxDecoderWindow caps the zstd window a reader accepts, which bounds the
// memory a hostile archive can make a decoder allocate. Cedana's frames
// need a window of at most frameSize.
const maxDecoderWindow = 64 << 20

// frameSize is the uncompressed size of the independent zstd frames that
// writers cut content into (the last frame of an entry may be shorter).
// It is also the size of the chunks that flow through a pipeline, so that
// one decoded frame fills one chunk. With SpeedDefault, 4 MiB frames
// compressed the benchmark inputs smaller than `zstd -1` of the whole
// input (whose window is only 512 KiB), and 2 MiB frames noticeably less
// well on repetitive text.
const frameSize = 4 << 20

// chunkDepth is how many chunks one pipeline may have in flight.
const chunkDepth = 6

// concurrency resolves a Concurrency option (0 means one per CPU).
func concurrency(n int) int {
	if n <= 0 {
		return runtime.NumCPU()
	}
	return n
}

// newEncoder returns the zstd encoder shared by the n compression workers
// of one archive (EncodeAll is safe for n concurrent calls).
//
// SpeedDefault rather than SpeedFastest: on the benchmark inputs it costs
// about as much CPU on compressible data (it finds longer matches, so it
// has fewer literals to code), produces 5-10% smaller output (Fastest was
// larger than `zstd -1` on repetitive text), and decodes faster, which is
// what restore waits for. It costs ~15% more CPU on hard-to-compress text.
func newEncoder(n int) (*zstd.Encoder, error) {
	return zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderConcurrency(n),
		// The SHA-256 of each entry covers the content; a per-frame
		// xxhash would only cost time.
		zstd.WithEncoderCRC(false))
}

// decoders holds one extraction worker's reusable decompressors.
type decoders struct {
	zstd   *zstd.Decoder // streaming
	frames *zstd.Decoder // whole frames (DecodeAll), from several goroutines
	flate  io.ReadCloser
}

// newDecoders returns decompressors for one extraction worker whose
// frames are decoded by up to workers goroutines.
func newDecoders(workers int) (*decoders, error) {
	z, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(false),
		zstd.WithDecoderMaxWindow(maxDecoderWindow))
	if err != nil {
		return nil, err
	}
	fr, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(workers),
		zstd.WithDecoderMaxWindow(maxDecoderWindow),
		zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		z.Close()
		return nil, err
	}
	return &decoders{zstd: z, frames: fr}, nil
}

// open returns a reader of the uncompressed content of raw.
func (d *decoders) open(method uint16, raw io.Reader) (io.Reader, error) {
	switch method {
	case methodStore:
		return raw, nil
	case methodDeflate:
		if d.flate == nil {
			d.flate = flate.NewReader(raw)
		} else if err := d.flate.(flate.Resetter).Reset(raw, nil); err != nil {
			return nil, err
		}
		return d.flate, nil
	case methodZstd:
		if err := d.zstd.Reset(raw); err != nil {
			return nil, err
		}
		return d.zstd, nil
	}
	return nil, fmt.Errorf("%w: unsupported compression method %d", ErrCorrupt, method)
}

// close releases the decoders' goroutines and memory.
func (d *decoders) close() {
	d.zstd.Close()
	d.frames.Close()
	if d.flate != nil {
		d.flate.Close()
	}
}
