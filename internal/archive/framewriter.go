package archive

import (
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// frameWriter is the zip compressor for zstd entries. It cuts the content
// into independent zstd frames of frameSize bytes (each with its content
// size in the header) and compresses up to workers of them at once; the
// frames are written in order, so the entry is one ordinary zstd stream
// that any decoder reads, and that Cedana's reader decodes in parallel
// (see decodeFrames).
//
// An entry that fits in one frame (most CRIU images) is compressed in the
// calling goroutine at Close, into buffers sized to it; the workers and
// their frame-sized buffers are only started by the first full frame.
//
// One frameWriter serves every entry of an archive: expect and reset start
// an entry, Close ends it, shutdown stops the workers.
type frameWriter struct {
	workers     int
	w           io.Writer
	cur         []byte // the frame being filled
	left        int64  // bytes of the entry still expected, a sizing hint
	out         []byte // compressed single-frame entry, reused
	pending     []*frameJob
	jobs        chan *frameJob // nil until the workers start
	encs        []*zstd.Encoder
	freeSrc     [][]byte
	maxInflight int
	wrote       bool  // this entry has submitted a frame
	err         error // sticky write error
	wg          sync.WaitGroup
	// stored digests the compressed bytes of the current entry;
	// prevStored keeps the previous entry's when the next one starts.
	// While frames are in flight only the hasher touches stored.
	stored, prevStored *digests
	hashIn             chan hashJob
	hashBack           chan []byte
	// onFrame, if set, is called with the stored length of each frame
	// right before the frame is written.
	onFrame func(n int) error
}

// hashDepth is how many compressed frames may wait for the hasher.
const hashDepth = 4

// frameJob is one frame to compress.
type frameJob struct {
	src, dst []byte
	done     chan struct{}
}

// newFrameWriter returns a frame writer that compresses large entries on
// up to workers goroutines.
func newFrameWriter(workers int) *frameWriter {
	return &frameWriter{workers: workers, maxInflight: 2 * workers}
}

// expect tells the writer the expected size of the next entry, so that it
// can size its buffer (the content may still turn out longer or shorter).
func (fw *frameWriter) expect(size int64) { fw.left = size }

// reset starts a new entry written to w. It is the zip.Compressor.
func (fw *frameWriter) reset(w io.Writer) (io.WriteCloser, error) {
	fw.prevStored, fw.stored = fw.stored, newDigests()
	fw.w, fw.wrote, fw.err = w, false, nil
	fw.cur = fw.cur[:0]
	return fw, nil
}

// Write buffers p into frames, submitting each full frame.
func (fw *frameWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if fw.err != nil {
			return 0, fw.err
		}
		c := min(len(p), frameSize-len(fw.cur))
		if len(fw.cur)+c > cap(fw.cur) {
			fw.grow(len(fw.cur) + c)
		}
		fw.cur = append(fw.cur, p[:c]...)
		fw.left -= int64(c)
		p = p[c:]
		if len(fw.cur) == frameSize {
			fw.submit()
		}
	}
	return n, fw.err
}

// grow gives cur room for n bytes, and for the rest of the frame as far
// as the expected size tells.
func (fw *frameWriter) grow(n int) {
	var b []byte
	if k := len(fw.freeSrc); k > 0 {
		b, fw.freeSrc = fw.freeSrc[k-1], fw.freeSrc[:k-1] // frameSize capacity
	} else {
		want := int(min(frameSize, max(int64(n), int64(len(fw.cur))+fw.left, 2*int64(cap(fw.cur)))))
		b = make([]byte, 0, want)
	}
	fw.cur = append(b, fw.cur...)
}

// Close ends the entry. An entry that fits in one frame (or is empty) is
// compressed here; otherwise the last partial frame is submitted and every
// pending frame is written.
func (fw *frameWriter) Close() error {
	if !fw.wrote && fw.err == nil {
		fw.err = fw.encodeSingle()
		return fw.err
	}
	if len(fw.cur) > 0 && fw.err == nil {
		fw.submit()
	}
	for len(fw.pending) > 0 {
		fw.writeHead()
	}
	fw.hashBarrier() // the entry's digests are complete
	return fw.err
}

// encodeSingle compresses cur, the whole entry, as one frame and writes
// it, in the calling goroutine.
func (fw *frameWriter) encodeSingle() error {
	pool := encoderFor(len(fw.cur))
	enc, err := pool.get()
	if err != nil {
		return err
	}
	fw.out = encodeFrame(enc, fw.cur, fw.out[:0])
	pool.put(enc)
	fw.cur = fw.cur[:0]
	if fw.onFrame != nil {
		if err := fw.onFrame(len(fw.out)); err != nil {
			return err
		}
	}
	_, err = fw.w.Write(fw.out)
	fw.stored.Write(fw.out)
	return err
}

// submit hands the current frame to the workers, starting them if needed,
// first writing finished frames and waiting if too many are in flight.
func (fw *frameWriter) submit() {
	if fw.jobs == nil {
		if fw.err = fw.start(); fw.err != nil {
			return
		}
	}
	for len(fw.pending) > 0 && (len(fw.pending) >= fw.maxInflight || isDone(fw.pending[0].done)) {
		fw.writeHead()
	}
	j := &frameJob{src: fw.cur, dst: fw.getDst(), done: make(chan struct{})}
	fw.cur = nil
	fw.wrote = true
	fw.pending = append(fw.pending, j)
	fw.jobs <- j
}

// start starts the compression workers, each with its own encoder.
func (fw *frameWriter) start() error {
	for range fw.workers {
		enc, err := frameEncoders.get()
		if err != nil {
			for _, e := range fw.encs {
				frameEncoders.put(e)
			}
			fw.encs = nil
			return err
		}
		fw.encs = append(fw.encs, enc)
	}
	fw.jobs = make(chan *frameJob, fw.maxInflight)
	fw.hashIn = make(chan hashJob, hashDepth)
	// Room for every buffer that can be out: in flight, queued for the
	// hasher, being hashed.
	fw.hashBack = make(chan []byte, fw.maxInflight+hashDepth+2)
	go fw.hasher(fw.hashIn)
	for _, enc := range fw.encs {
		fw.wg.Go(func() {
			for j := range fw.jobs {
				j.dst = encodeFrame(enc, j.src, j.dst[:0])
				close(j.done)
			}
		})
	}
	return nil
}

// rawBelow is the content size under which a frame is stored as raw
// blocks without running the compressor: most CRIU images are a few
// hundred bytes, where the encoder's set-up (clearing its tables) cost
// more than the bytes it saved — 13 % of the daemon's CPU per periodic
// checkpoint of an idle job, to save about 10 KiB per archive.
const rawBelow = 4 << 10

// encodeFrame appends to dst src as one zstd frame: raw blocks when src
// is small or looks incompressible, compressed otherwise.
func encodeFrame(enc *zstd.Encoder, src, dst []byte) []byte {
	if len(src) < rawBelow || incompressible(src) {
		return appendRawFrame(dst, src)
	}
	return enc.EncodeAll(src, dst)
}

// writeHead waits for the oldest frame and writes it out.
func (fw *frameWriter) writeHead() {
	j := fw.pending[0]
	fw.pending = fw.pending[1:]
	<-j.done
	if fw.err == nil && fw.onFrame != nil {
		fw.err = fw.onFrame(len(j.dst))
	}
	if fw.err == nil {
		_, fw.err = fw.w.Write(j.dst)
	}
	if cap(j.src) == frameSize {
		fw.freeSrc = append(fw.freeSrc, j.src[:0])
	}
	// The digests of the stored bytes are computed by the hasher, in
	// order, while the next frames are compressed and written; it gives
	// the buffer back when done.
	fw.hashIn <- hashJob{b: j.dst}
}

// hashJob is a compressed frame for the hasher, or (done set) a barrier.
type hashJob struct {
	b    []byte
	done chan struct{}
}

// hasher digests the stored bytes of frames in order (see writeHead).
func (fw *frameWriter) hasher(in <-chan hashJob) {
	for j := range in {
		if j.done != nil {
			close(j.done)
			continue
		}
		fw.stored.Write(j.b)
		fw.hashBack <- j.b[:0]
	}
}

// hashBarrier waits until the hasher has digested every frame sent.
func (fw *frameWriter) hashBarrier() {
	if fw.hashIn == nil {
		return
	}
	d := make(chan struct{})
	fw.hashIn <- hashJob{done: d}
	<-d
}

// getDst returns a buffer for a compressed frame: one the hasher gave
// back, or a new one.
func (fw *frameWriter) getDst() []byte {
	select {
	case b := <-fw.hashBack:
		return b
	default:
		return make([]byte, 0, frameSize+frameSize/64+1024)
	}
}

// shutdown waits for in-flight frames, stops the workers and returns
// their encoders to the pool.
func (fw *frameWriter) shutdown() {
	if fw.jobs == nil {
		return
	}
	for _, j := range fw.pending {
		<-j.done
	}
	fw.pending = nil
	close(fw.jobs)
	fw.wg.Wait()
	close(fw.hashIn)
	fw.hashIn = nil
	for _, enc := range fw.encs {
		frameEncoders.put(enc)
	}
	fw.encs = nil
}
