package archive

import (
	"io"
	"sync"
)

// LendingSource is a SequentialSource that can lend the bytes of a range
// where they lie instead of copying them out: an encrypted object opens
// its chunks straight into memory that StreamEntry cuts the frames from,
// hashes and vmsplices into CRIU's pipe, so that every byte is written
// once in user space (by AES-GCM) and read where it was written.
type LendingSource interface {
	SequentialSource
	// LendRange returns a reader of the n bytes at offset off, which
	// implements Lender with a window of at least window bytes (or all n)
	// when the source can lend them; otherwise an ordinary reader, as
	// StreamRange's. A Lender writes every byte of the range to sum, in
	// order, before Peek or Read returns it (the source does it where the
	// bytes are still in a core's cache: right after decrypting them); an
	// ordinary reader leaves sum alone.
	LendRange(off, n int64, window int, sum io.Writer) (io.ReadCloser, error)
}

// Lender is a reader whose bytes are borrowed in place. The bytes it lends
// lie outside the Go heap, in memory not reused after Close, so they may
// be vmspliced into a pipe whose reader takes them after Close.
type Lender interface {
	// Peek returns the next n bytes without moving past them, once they
	// are read and, for an encrypted object, authenticated. It waits for
	// them. Bytes lent (skipped, not yet returned) and peeked together
	// never exceed Window. A read error, or the range ending first, is an
	// error, never fewer bytes.
	Peek(n int) ([]byte, error)
	// Skip moves past the first n bytes last peeked; they stay lent, and
	// unchanged, until Return gives them back.
	Skip(n int)
	// Return gives back the oldest n lent bytes. Any goroutine may call
	// it, one at a time.
	Return(n int)
	// Stop makes a Peek waiting for room (that will not be given back)
	// and every later Peek fail; the lent bytes stay valid until Close.
	Stop()
	// Window is how many bytes may be lent and peeked at once.
	Window() int
}

// lentFrames cuts frames out of a Lender's bytes: no copy. Frames are
// released in any order (decoders finish out of order) but bytes go back
// to the lender in stream order, so a frame released early waits for the
// frames before it; it keeps its place in the count of frames in flight
// until then, so the lent bytes never exceed that count of frames.
type lentFrames struct {
	l     Lender
	avail chan struct{} // one token per frame that may still be read
	stop  <-chan struct{}

	mu    sync.Mutex
	queue []*seqFrame // read and not given back, in stream order
}

func newLentFrames(l Lender, n int, stop <-chan struct{}) *lentFrames {
	f := &lentFrames{l: l, avail: make(chan struct{}, n), stop: stop}
	for range n {
		f.avail <- struct{}{}
	}
	return f
}

func (f *lentFrames) next(left int64) (*seqFrame, error) {
	select {
	case <-f.avail:
	case <-f.stop:
		return nil, errStopped
	}
	j, err := readFrame(f.l.Peek, left)
	if err != nil {
		f.avail <- struct{}{}
		return nil, err
	}
	j.lent = len(j.stored)
	f.l.Skip(j.lent)
	f.mu.Lock()
	f.queue = append(f.queue, j)
	f.mu.Unlock()
	return j, nil
}

func (f *lentFrames) release(j *seqFrame) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j.released = true
	n, k := 0, 0
	for k < len(f.queue) && f.queue[k].released {
		n += f.queue[k].lent
		k++
	}
	if k == 0 {
		return
	}
	clear(f.queue[:k])
	f.queue = f.queue[k:]
	f.l.Return(n)
	for range k {
		f.avail <- struct{}{}
	}
}

func (f *lentFrames) vmsplicable() bool { return true }
