package archive

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"unsafe"

	"github.com/klauspost/compress/zstd"
)

// frameTask is one frame handed to a decoding worker.
type frameTask struct {
	comp []byte // the compressed frame
	out  []byte // a pipeline buffer to decode into
	size int64  // the frame's content size
	err  error
	done chan struct{}
}

// decodeFrames is a pipeline producer for a zstd entry of declared size
// limit. It cuts the stream into frames, decodes up to workers of them at
// once, and emits their content in order. Cedana writes content as
// independent frames of frameSize bytes (see frameWriter), so a large
// entry decodes on every core. If the stream is not made of such frames
// (another writer, or a change of frame size), it decodes the rest as a
// plain stream. Output beyond limit is an error, detected from the frame
// headers before decoding.
func decodeFrames(f *flow, src *io.SectionReader, dec *decoders, workers int, limit int64) error {
	s := &frameSplitter{
		r:          src,
		size:       src.Size(),
		maxContent: f.p.bufSize,
		maxFrame:   f.p.bufSize + f.p.bufSize/8 + 1024,
	}
	// At most maxInflight decoded frames wait to be emitted, fewer than the
	// pipeline's buffers, so that getting a buffer never waits on a frame
	// that only this goroutine could emit.
	maxInflight := max(1, min(2*workers, f.p.maxBufs-2))
	tasks := make(chan *frameTask, maxInflight)
	var wg sync.WaitGroup
	for range workers {
		fd, err := frameDecoders.get()
		if err != nil {
			close(tasks)
			wg.Wait()
			return err
		}
		wg.Go(func() {
			defer frameDecoders.put(fd)
			for t := range tasks {
				t.out, t.err = decodeFrame(fd, t.comp, t.out, t.size)
				close(t.done)
			}
		})
	}
	var (
		pending  []*frameTask
		freeComp [][]byte
		total    int64
	)
	// emitHead waits for the oldest frame and emits it.
	emitHead := func() error {
		t := pending[0]
		pending = pending[1:]
		<-t.done
		freeComp = append(freeComp, t.comp)
		if t.err != nil {
			f.p.put(t.out)
			return t.err
		}
		f.emit(t.out)
		return nil
	}
	defer func() {
		close(tasks)
		wg.Wait()
		for _, t := range pending {
			f.p.put(t.out)
		}
	}()

	for !f.failed() {
		for len(pending) > 0 && (len(pending) >= maxInflight || isDone(pending[0].done)) {
			if err := emitHead(); err != nil {
				return err
			}
		}
		var comp []byte
		if n := len(freeComp); n > 0 {
			comp, freeComp = freeComp[n-1], freeComp[:n-1]
		} else {
			comp = make([]byte, 0, s.maxFrame)
		}
		comp, size, err := s.next(comp)
		if err == io.EOF || errors.Is(err, errFrameLayout) {
			for len(pending) > 0 {
				if err := emitHead(); err != nil {
					return err
				}
			}
			if err == io.EOF {
				return nil
			}
			return decodeRest(f, src, s.off, dec, limit-total)
		}
		if err != nil {
			return fmt.Errorf("%w at compressed offset %d", err, s.off)
		}
		if total += size; total > limit {
			return fmt.Errorf("%w: decompresses to more than the %d bytes declared", ErrCorrupt, limit)
		}
		out := f.get()
		if out == nil {
			return nil
		}
		t := &frameTask{comp: comp, out: out, size: size, done: make(chan struct{})}
		pending = append(pending, t)
		tasks <- t
	}
	return nil
}

// decodeFrame decodes one frame of content size size into out, which has
// room for it.
func decodeFrame(fd *zstd.Decoder, comp, out []byte, size int64) ([]byte, error) {
	got, err := fd.DecodeAll(comp, out[:0])
	if err != nil {
		return out, err
	}
	if int64(len(got)) != size {
		return out, fmt.Errorf("frame decodes to %d bytes, its header says %d", len(got), size)
	}
	if len(got) > 0 && unsafe.SliceData(got) != unsafe.SliceData(out) {
		// The decoder needed more room than out has; keep the buffer.
		copy(out, got)
	}
	return out[:len(got)], nil
}

// decodeRest decodes the stream from compressed offset off to its end as
// a plain zstd stream, emitting at most limit bytes (and failing beyond).
func decodeRest(f *flow, src *io.SectionReader, off int64, dec *decoders, limit int64) error {
	r, err := dec.open(methodZstd, io.NewSectionReader(src, off, src.Size()-off))
	if err != nil {
		return err
	}
	return emitReader(f, &sizeGuard{r: r, left: limit})
}

// emitReader emits the content of r in buffer-sized chunks.
func emitReader(f *flow, r io.Reader) error {
	for !f.failed() {
		b := f.get()
		if b == nil {
			return nil
		}
		n, err := readFull(r, b)
		if n > 0 {
			f.emit(b[:n])
		} else {
			f.p.put(b)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// sizeGuard passes through at most left bytes of r and fails if r has
// more: a decompressed stream longer than declared is cut (zip-bomb guard).
type sizeGuard struct {
	r    io.Reader
	left int64
}

func (g *sizeGuard) Read(p []byte) (int, error) {
	if g.left <= 0 {
		// Probe for one more byte.
		var one [1]byte
		n, err := g.r.Read(one[:])
		if n > 0 {
			return 0, fmt.Errorf("%w: decompresses to more than the declared size", ErrCorrupt)
		}
		return 0, err
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	n, err := g.r.Read(p)
	g.left -= int64(n)
	return n, err
}

// isDone reports whether ch is closed.
func isDone(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
