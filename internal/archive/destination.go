package archive

import (
	"errors"
	"io"
	"sync"
)

// Destination receives an archive as one sequential stream and publishes
// it atomically: nothing is visible under its name until Commit returns
// nil; Abort (or a failed Commit) leaves nothing behind. An object store
// upload fits (internal/storage.Writer has exactly this shape); the
// archive package never learns where the bytes go.
type Destination interface {
	io.Writer
	// Commit makes the complete archive visible.
	Commit() error
	// Abort discards what was written.
	Abort() error
}

// FrameDestination is a Destination that wants to know where the
// independent zstd frames of the large entries lie in the stream, to store
// each one as a content-addressed chunk (internal/chunks). Frame is called
// before the frame's bytes are written, from the goroutine that writes
// them; off is the frame's offset in the stream and n its stored length.
// Every frame of a zstd entry is announced; the destination chooses which
// to keep apart (internal/chunks keeps frames of 64 KiB and more).
type FrameDestination interface {
	Destination
	Frame(off, n int64)
}

// archiveSink is the sequential writer under an archive being created: a
// file (fileSink) or a Destination (streamSink).
type archiveSink interface {
	io.Writer
	// Close writes what is buffered and makes it durable where the sink
	// can (fsync); it does not publish.
	Close() error
	// abort stops the sink after a failure; a no-op after Close.
	abort()
}

var (
	_ archiveSink = (*fileSink)(nil)
	_ archiveSink = (*streamSink)(nil)
)

// streamChunk is the size of the writes a streamSink hands to its
// destination: large enough for an object store's parts to fill in a few
// writes, small enough that compression and upload overlap finely.
const streamChunk = 4 << 20

// streamSink gathers the zip stream into chunks and writes each full
// chunk to the destination from its own goroutine, so that compressing
// the next chunk and uploading this one overlap (as fileSink overlaps
// compression with the disk).
type streamSink struct {
	dst    io.Writer
	cur    []byte
	free   chan []byte
	queue  chan []byte
	done   chan struct{}
	made   int // buffers taken from streamBufs
	mu     sync.Mutex
	err    error
	closed bool
}

func newStreamSink(dst io.Writer) *streamSink {
	s := &streamSink{dst: dst, free: make(chan []byte, sinkDepth), queue: make(chan []byte, sinkDepth),
		done: make(chan struct{})}
	go s.writer()
	return s
}

// streamBufs holds the streamSinks' chunk buffers between archives: a
// daemon writing many small archives (periodic checkpoints of idle jobs)
// spent a third of its CPU allocating and zeroing three fresh 4 MiB
// buffers per archive.
var streamBufs = sync.Pool{New: func() any { return new([]byte) }}

// buffer returns a free chunk buffer: a returned one, else a new one from
// the pool while fewer than sinkDepth exist, else it waits for one.
func (s *streamSink) buffer() []byte {
	select {
	case b := <-s.free:
		return b
	default:
	}
	if s.made < sinkDepth {
		s.made++
		bp := streamBufs.Get().(*[]byte)
		if cap(*bp) < streamChunk {
			*bp = make([]byte, 0, streamChunk)
		}
		return (*bp)[:0]
	}
	return <-s.free
}

// release returns the buffers to the pool once the writer has ended.
func (s *streamSink) release() {
	if s.cur != nil {
		b := s.cur[:0]
		streamBufs.Put(&b)
		s.cur = nil
	}
	for {
		select {
		case b := <-s.free:
			b = b[:0]
			streamBufs.Put(&b)
		default:
			return
		}
	}
}

func (s *streamSink) writer() {
	defer close(s.done)
	for b := range s.queue {
		if s.failed() == nil {
			if _, err := s.dst.Write(b); err != nil {
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
			}
		}
		s.free <- b[:0]
	}
}

func (s *streamSink) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Write appends p to the stream.
func (s *streamSink) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if err := s.failed(); err != nil {
			return 0, err
		}
		if s.cur == nil {
			s.cur = s.buffer()
		}
		c := copy(s.cur[len(s.cur):cap(s.cur)], p)
		s.cur = s.cur[:len(s.cur)+c]
		p = p[c:]
		if len(s.cur) == cap(s.cur) {
			s.queue <- s.cur
			s.cur = nil
		}
	}
	return n, nil
}

// Close writes what is left and waits for the writer.
func (s *streamSink) Close() error {
	if s.closed {
		return s.failed()
	}
	s.closed = true
	if len(s.cur) > 0 {
		s.queue <- s.cur
		s.cur = nil
	}
	close(s.queue)
	<-s.done
	s.release()
	return s.failed()
}

func (s *streamSink) abort() {
	if s.closed {
		return
	}
	s.closed = true
	s.mu.Lock()
	if s.err == nil {
		s.err = errors.New("archive write aborted")
	}
	s.mu.Unlock()
	close(s.queue)
	<-s.done
	s.release()
}
