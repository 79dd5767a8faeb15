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
// One frameWriter serves every entry of an archive: reset starts an entry,
// Close ends it, shutdown stops the workers.
type frameWriter struct {
	enc         *zstd.Encoder
	w           io.Writer
	cur         []byte      // the frame being filled
	pending     []*frameJob // submitted frames, in order
	jobs        chan *frameJob
	freeSrc     [][]byte
	freeDst     [][]byte
	maxInflight int
	wrote       bool  // this entry has produced a frame
	err         error // sticky write error
	wg          sync.WaitGroup
}

// frameJob is one frame to compress.
type frameJob struct {
	src, dst []byte
	done     chan struct{}
}

// newFrameWriter starts workers compression goroutines sharing enc.
func newFrameWriter(enc *zstd.Encoder, workers int) *frameWriter {
	fw := &frameWriter{enc: enc, jobs: make(chan *frameJob, 2*workers), maxInflight: 2 * workers}
	for range workers {
		fw.wg.Go(func() {
			for j := range fw.jobs {
				j.dst = enc.EncodeAll(j.src, j.dst[:0])
				close(j.done)
			}
		})
	}
	return fw
}

// reset starts a new entry written to w. It is the zip.Compressor.
func (fw *frameWriter) reset(w io.Writer) (io.WriteCloser, error) {
	fw.w, fw.wrote, fw.err = w, false, nil
	return fw, nil
}

// Write buffers p into frames, submitting each full frame.
func (fw *frameWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if fw.err != nil {
			return 0, fw.err
		}
		if fw.cur == nil {
			fw.cur = fw.getBuf(&fw.freeSrc, frameSize)
		}
		c := copy(fw.cur[len(fw.cur):frameSize], p)
		fw.cur = fw.cur[:len(fw.cur)+c]
		p = p[c:]
		if len(fw.cur) == frameSize {
			fw.submit()
		}
	}
	return n, fw.err
}

// Close submits the last partial frame (or an empty frame for an empty
// entry) and writes every pending frame.
func (fw *frameWriter) Close() error {
	if len(fw.cur) > 0 || !fw.wrote {
		if fw.cur == nil {
			fw.cur = fw.getBuf(&fw.freeSrc, frameSize)
		}
		fw.submit()
	}
	for len(fw.pending) > 0 {
		fw.writeHead()
	}
	return fw.err
}

// submit hands the current frame to the workers, first writing finished
// frames and waiting if too many are in flight.
func (fw *frameWriter) submit() {
	for len(fw.pending) > 0 && (len(fw.pending) >= fw.maxInflight || isDone(fw.pending[0].done)) {
		fw.writeHead()
	}
	j := &frameJob{src: fw.cur, dst: fw.getBuf(&fw.freeDst, frameSize+frameSize/64+1024), done: make(chan struct{})}
	fw.cur = nil
	fw.wrote = true
	fw.pending = append(fw.pending, j)
	fw.jobs <- j
}

// writeHead waits for the oldest frame and writes it out.
func (fw *frameWriter) writeHead() {
	j := fw.pending[0]
	fw.pending = fw.pending[1:]
	<-j.done
	if fw.err == nil {
		_, fw.err = fw.w.Write(j.dst)
	}
	fw.freeSrc = append(fw.freeSrc, j.src[:0])
	fw.freeDst = append(fw.freeDst, j.dst[:0])
}

// getBuf takes a buffer from a free list or allocates one of capacity n.
func (fw *frameWriter) getBuf(free *[][]byte, n int) []byte {
	if k := len(*free); k > 0 {
		b := (*free)[k-1]
		*free = (*free)[:k-1]
		return b
	}
	return make([]byte, 0, n)
}

// shutdown waits for in-flight frames and stops the workers.
func (fw *frameWriter) shutdown() {
	for _, j := range fw.pending {
		<-j.done
	}
	fw.pending = nil
	close(fw.jobs)
	fw.wg.Wait()
}
