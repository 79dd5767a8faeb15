package archive

import (
	"context"
	"io"
	"sync"
)

// pipeline moves a stream through a chain of stages (e.g. decompress →
// hash → write), each stage in its own goroutine, so that the stages of one
// large entry run in parallel on different chunks. Chunks are reusable
// buffers owned by the pipeline, allocated on demand and reused across
// runs. One run at a time.
type pipeline struct {
	bufSize int
	maxBufs int
	free    chan []byte
	// small is runReader's buffer for streams expected to be shorter than
	// bufSize, sized to them and reused across runs; it is never in free.
	small []byte

	mu        sync.Mutex // guards allocated
	allocated int
}

// newPipeline returns a pipeline with up to maxBufs buffers of bufSize
// bytes.
func newPipeline(bufSize, maxBufs int) *pipeline {
	return &pipeline{bufSize: bufSize, maxBufs: maxBufs, free: make(chan []byte, maxBufs)}
}

// get returns a free buffer, allocating one if the limit allows, or waits
// for one to come back. It returns nil if done is closed first. It may be
// called from any goroutine.
func (p *pipeline) get(done <-chan struct{}) []byte {
	select {
	case b := <-p.free:
		return b
	default:
	}
	p.mu.Lock()
	if p.allocated < p.maxBufs {
		p.allocated++
		p.mu.Unlock()
		return make([]byte, p.bufSize)
	}
	p.mu.Unlock()
	select {
	case b := <-p.free:
		return b
	case <-done:
		return nil
	}
}

// put returns a buffer. It never blocks: free can hold every buffer.
// Buffers shorter than bufSize are runReader's and are dropped.
func (p *pipeline) put(b []byte) {
	if cap(b) == p.bufSize {
		p.free <- b[:cap(b)]
	}
}

// flow is one run of a pipeline, seen from its producer.
type flow struct {
	p    *pipeline
	ctx  context.Context
	in   chan []byte
	done chan struct{} // closed on the first error
	once sync.Once
	err  error
}

// get returns a free buffer, or nil once the flow has failed.
func (f *flow) get() []byte { return f.p.get(f.done) }

// emit passes a chunk (a slice of a buffer from get) to the stages, which
// own it from then on. It never blocks.
func (f *flow) emit(b []byte) {
	if f.failed() {
		f.p.put(b)
		return
	}
	f.in <- b
}

// fail records the first error and stops the flow.
func (f *flow) fail(err error) {
	f.once.Do(func() { f.err = err; close(f.done) })
}

// failed reports whether the flow has stopped on an error, or its context
// was cancelled (which it then records as the error).
func (f *flow) failed() bool {
	select {
	case <-f.done:
		return true
	default:
	}
	if err := f.ctx.Err(); err != nil {
		f.fail(err)
		return true
	}
	return false
}

// run starts the stages, calls produce in the calling goroutine, waits for
// the stages to drain and returns the first error of produce, a stage or
// ctx. Every chunk goes through the stages in order.
func (p *pipeline) run(ctx context.Context, produce func(*flow) error, stages ...func([]byte) error) error {
	f := &flow{p: p, ctx: ctx, done: make(chan struct{})}
	// Every channel can hold every buffer, so sends never block.
	chans := make([]chan []byte, len(stages)+1)
	for i := range chans {
		chans[i] = make(chan []byte, p.maxBufs)
	}
	f.in = chans[0]
	var wg sync.WaitGroup
	for i, st := range stages {
		last := i == len(stages)-1
		in, out := chans[i], chans[i+1]
		wg.Go(func() {
			if !last {
				defer close(out)
			}
			for b := range in {
				if !f.failed() {
					if err := st(b); err != nil {
						f.fail(err)
					}
				}
				if last || f.failed() {
					p.put(b)
				} else {
					out <- b
				}
			}
		})
	}
	if err := produce(f); err != nil {
		f.fail(err)
	}
	close(f.in)
	wg.Wait()
	return f.err
}

// runReader streams r through the stages in chunks of the pipeline's
// buffer size. A stream that fits in one buffer is processed inline,
// without starting goroutines. size is the expected length of the stream
// (-1 if unknown): a stream expected to be short is first read into a
// buffer of that size plus one byte (to see its end), so that small files
// do not cost a full-size buffer; it may still turn out longer.
func (p *pipeline) runReader(ctx context.Context, r io.Reader, size int64, stages ...func([]byte) error) error {
	var first []byte
	if size >= 0 && size+1 < int64(p.bufSize) {
		if cap(p.small) <= int(size) {
			p.small = make([]byte, min(int64(p.bufSize-1), max(size+1, 2*int64(cap(p.small)), 4<<10)))
		}
		first = p.small[:size+1]
	} else {
		first = p.get(nil)
	}
	n, err := readFull(r, first)
	if err != nil {
		defer p.put(first)
		if err != io.EOF {
			return err
		}
		for _, st := range stages {
			if err := st(first[:n]); err != nil {
				return err
			}
		}
		return nil
	}
	if cap(first) < p.bufSize {
		p.small = nil // the stages own it now; put drops it
	}
	return p.run(ctx, func(f *flow) error {
		f.emit(first[:n])
		for !f.failed() {
			b := f.get()
			if b == nil {
				break
			}
			n, err := readFull(r, b)
			if n > 0 {
				f.emit(b[:n])
			} else {
				p.put(b)
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
		return nil
	}, stages...)
}

// readFull reads from r until buf is full or r returns an error, which is
// passed on as is (io.EOF at the end of the stream).
func readFull(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
