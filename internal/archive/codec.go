package archive

import (
	"compress/flate"
	"fmt"
	"io"
	"runtime"
	"sync"

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

// newEncoder returns a zstd encoder for up to n concurrent EncodeAll
// calls.
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
		// The SHA-256 of the stored bytes pins the content (decoding is
		// deterministic); a per-frame XXH64 cost 0.25 CPU-s per GiB on
		// each side for no further guarantee.
		zstd.WithEncoderCRC(false))
}

// coderPool caches zstd encoders or decoders of one configuration across
// archives. Building one costs more than compressing a small archive (an
// encoder's match tables alone are 1.3 MiB), which made a daemon that
// checkpoints many small processes spend its time allocating them.
//
// The pools are package-level caches that hold no semantic state: every
// coder in a pool has the same fixed options, and EncodeAll, DecodeAll and
// a stream decoder's Reset each start from scratch, so which coder a
// caller gets changes only how fast it runs, never the bytes it produces.
// They start no goroutines (concurrency 1, no streaming encoder), so the
// garbage collector may drop them from the pool without closing them.
type coderPool[T any] struct {
	pool  sync.Pool
	build func() (T, error)
}

// get returns a cached coder or builds one.
func (p *coderPool[T]) get() (T, error) {
	if c, ok := p.pool.Get().(T); ok {
		return c, nil
	}
	return p.build()
}

// put returns a coder for reuse; the caller must not use it any more.
func (p *coderPool[T]) put(c T) { p.pool.Put(c) }

var (
	// blockEncoders compress content of at most maxBlockSize bytes (CRIU's
	// small images: core, files, mm…). Such content is one zstd block,
	// which the encoder codes without its history buffer. They use the
	// fastest level: with a few KiB of protobuf the bigger match tables of
	// SpeedDefault gain almost nothing but cost cache misses on every
	// archive, which dominated a daemon checkpointing many small jobs.
	blockEncoders = &coderPool[*zstd.Encoder]{build: func() (*zstd.Encoder, error) {
		return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
	}}
	// frameEncoders compress larger frames; each holds a history buffer of
	// twice the window (16 MiB) once used.
	frameEncoders = &coderPool[*zstd.Encoder]{build: func() (*zstd.Encoder, error) { return newEncoder(1) }}
	// streamDecoders read zstd streams (Reset before each).
	streamDecoders = &coderPool[*zstd.Decoder]{build: func() (*zstd.Decoder, error) {
		return zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1), // synchronous: no goroutines
			zstd.WithDecoderLowmem(false),
			zstd.WithDecoderMaxWindow(maxDecoderWindow))
	}}
	// frameDecoders decode whole frames (DecodeAll), one call at a time.
	frameDecoders = &coderPool[*zstd.Decoder]{build: func() (*zstd.Decoder, error) {
		return zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(maxDecoderWindow),
			zstd.WithDecodeAllCapLimit(true))
	}}
)

// encoderFor returns the pool of encoders for content of n bytes.
func encoderFor(n int) *coderPool[*zstd.Encoder] {
	if n <= maxBlockSize {
		return blockEncoders
	}
	return frameEncoders
}

// decoders holds one extraction worker's stream decompressors, taken from
// the pools on first use and returned by close.
type decoders struct {
	zstd  *zstd.Decoder
	flate io.ReadCloser
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
		if d.zstd == nil {
			z, err := streamDecoders.get()
			if err != nil {
				return nil, err
			}
			d.zstd = z
		}
		if err := d.zstd.Reset(raw); err != nil {
			return nil, err
		}
		return d.zstd, nil
	}
	return nil, fmt.Errorf("%w: unsupported compression method %d", ErrCorrupt, method)
}

// close returns the decompressors to the pools, or releases them.
func (d *decoders) close() {
	if d.zstd != nil {
		// Drop the last stream's input so the pool does not keep the
		// archive's file reachable.
		d.zstd.Reset(nil)
		streamDecoders.put(d.zstd)
		d.zstd = nil
	}
	if d.flate != nil {
		d.flate.Close()
		d.flate = nil
	}
}
