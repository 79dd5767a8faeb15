package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Open implements Backend.
func (j *JetStream) Open(ctx context.Context, key string) (Object, error) {
	if err := CheckKey(key); err != nil {
		return nil, j.err("open", key, err, "")
	}
	idx, err := j.readIndex(ctx, key)
	if err != nil {
		return nil, err
	}
	o := &jsObject{j: j, ctx: ctx, key: key, idx: idx, starts: make([]int64, len(idx.Parts))}
	var off int64
	for i, p := range idx.Parts {
		o.starts[i] = off
		off += p.Size
	}
	return o, nil
}

type jsObject struct {
	j      *JetStream
	ctx    context.Context
	key    string
	idx    *jsIndex
	starts []int64 // offset of each part
}

func (o *jsObject) Size() int64  { return o.idx.Size }
func (o *jsObject) Close() error { return nil }

// part returns the index of the part holding offset off.
func (o *jsObject) part(off int64) int {
	return sort.Search(len(o.starts), func(i int) bool { return o.starts[i] > off }) - 1
}

// openPart opens part i positioned at skip bytes into it.
func (o *jsObject) openPart(i int, skip int64) (*jsPartReader, error) {
	r, err := o.j.readPart(o.ctx, o.key, i, o.idx.Parts[i])
	if err != nil {
		return nil, err
	}
	for skip > 0 {
		b, err := r.take(skip)
		if err != nil {
			r.Close()
			return nil, err
		}
		skip -= int64(len(b))
	}
	return r, nil
}

func (o *jsObject) ReadAt(p []byte, off int64) (int, error) {
	if off >= o.idx.Size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), o.idx.Size-off)
	r, err := o.Stream(off, want)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	n, err := io.ReadFull(r, p[:want])
	if err != nil {
		return n, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (o *jsObject) Stream(off, n int64) (io.ReadCloser, error) {
	off, n, err := clampRange(off, n, o.idx.Size)
	if err != nil {
		return nil, o.j.err("read", o.key, err, "")
	}
	s := &jsStream{o: o, off: off, left: n, last: -1}
	if n > 0 {
		s.last = o.part(off + n - 1)
	}
	return s, nil
}

// jsPrefetch is how many parts after the one being read a stream opens ahead: opening
// one costs two requests (its info, a consumer), which the reader would otherwise wait
// for at every part boundary. An opened part holds at most jsWindow bytes until it is
// read.
const jsPrefetch = 2

// jsOpening is a part being opened in the background.
type jsOpening struct {
	i    int
	done chan struct{}
	r    *jsPartReader
	err  error
}

func (o *jsObject) openAhead(i int) *jsOpening {
	op := &jsOpening{i: i, done: make(chan struct{})}
	go func() {
		op.r, op.err = o.openPart(i, 0)
		close(op.done)
	}()
	return op
}

// discard closes the part once its opening has finished, without waiting for it.
func (op *jsOpening) discard() {
	go func() {
		<-op.done
		if op.r != nil {
			op.r.Close()
		}
	}()
}

// jsStream reads parts one after another, with the next jsPrefetch parts of the range
// opened ahead. A part read to its end has its SHA-256 digest checked before its last
// message's bytes are returned (jsPartReader). (A WriteTo handing whole 512 KiB messages
// to io.Copy cost more CPU than Read's copies into the caller's buffer when writing to a
// file here, 2.9–3.5 against 2.2–3.0 CPU-s per GiB.)
type jsStream struct {
	o     *jsObject
	off   int64
	left  int64
	last  int // the last part of the range
	cur   *jsPartReader
	curN  int64 // bytes of the range left in cur
	ahead []*jsOpening
	next  int   // the next part to open ahead (0: none opened yet)
	err   error // the first error, returned from then on
}

// open makes the part holding s.off current and opens the ones after it ahead.
func (s *jsStream) open() error {
	i := s.o.part(s.off)
	skip := s.off - s.o.starts[i]
	var r *jsPartReader
	var err error
	if len(s.ahead) > 0 && s.ahead[0].i == i && skip == 0 {
		op := s.ahead[0]
		s.ahead = s.ahead[1:]
		<-op.done
		r, err = op.r, op.err
	} else {
		for _, op := range s.ahead {
			op.discard()
		}
		s.ahead, s.next = nil, i+1
		r, err = s.o.openPart(i, skip)
	}
	if err != nil {
		return err
	}
	s.cur, s.curN = r, s.o.idx.Parts[i].Size-skip
	for ; len(s.ahead) < jsPrefetch && s.next <= s.last; s.next++ {
		if s.o.idx.Parts[s.next].Size > 0 {
			s.ahead = append(s.ahead, s.o.openAhead(s.next))
		}
	}
	return nil
}

// take returns the stream's next bytes, at most max of them, from one message.
func (s *jsStream) take(max int64) ([]byte, error) {
	if s.err != nil {
		return nil, s.err
	}
	b, err := s.take1(max)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return b, err
}

func (s *jsStream) take1(max int64) ([]byte, error) {
	if s.left <= 0 {
		return nil, io.EOF
	}
	if s.cur == nil {
		if err := s.open(); err != nil {
			return nil, err
		}
	}
	b, err := s.cur.take(min(max, s.left, s.curN))
	if err == io.EOF { // not reached: the part reader counts the size in the index
		err = s.o.j.err("read", s.o.key, withKind(ErrCorrupt, io.ErrUnexpectedEOF), "a part is shorter than its index says")
	}
	if err != nil {
		return nil, err
	}
	s.off += int64(len(b))
	s.left -= int64(len(b))
	s.curN -= int64(len(b))
	if s.curN == 0 {
		s.cur.Close()
		s.cur = nil
	}
	return b, nil
}

func (s *jsStream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b, err := s.take(int64(len(p)))
	n := copy(p, b)
	if err == nil && s.left == 0 {
		err = io.EOF
	}
	return n, err
}

func (s *jsStream) Close() error {
	if s.cur != nil {
		s.cur.Close()
		s.cur = nil
	}
	for _, op := range s.ahead {
		op.discard()
	}
	s.ahead = nil
	return nil
}

// How a part is read. nats.go's Get of an object makes a push consumer whose flow control
// starts each object at a 2 MiB window and doubles it per round trip, and hands the bytes
// over through a pipe; one Get per 16 MiB part ramped up again at every part, after two
// requests the reader waited for (a download took 1.25–1.6× a single Get of the same
// bytes). A part is read instead with an ordered pull consumer asking for jsWindow bytes
// at a time from the first one, and its messages' bytes are copied once, into the
// caller's buffer, while a goroutine of the reader hashes them. The digest is checked when the last message arrives, before any of its
// bytes are returned, against the digest in the part's info message (the one the
// object store's Get checks) and in the index.
const (
	// jsWindow is about how many bytes of a part a reader asks for at a time (in whole
	// messages; it asks for more when half have arrived). A stream holds up to
	// 1+jsPrefetch windows.
	jsWindow = 8 << 20
	// jsHashQueue is how many messages may wait for the hashing goroutine.
	jsHashQueue = 32
)

// jsPartReader reads one part.
type jsPartReader struct {
	j       *JetStream
	ctx     context.Context
	key     string
	i       int
	cons    jetstream.Consumer // nil for an empty part
	it      jetstream.MessagesContext
	unwatch func() bool
	want    []byte // SHA-256 of the part, from its info message
	left    int64  // bytes not yet received
	chunks  uint64 // messages not yet received
	data    []byte // what is left of the last message
	hashq   chan []byte
	sum     chan []byte
	checked bool  // the digest was checked and matched
	err     error // the first error, returned from then on
}

// readPart opens part i (p in the index) of key.
func (j *JetStream) readPart(ctx context.Context, key string, i int, p jsPart) (*jsPartReader, error) {
	corrupt := func(err error, hint string) error { return j.err("read", key, withKind(ErrCorrupt, err), hint) }
	info, err := j.obs.GetInfo(ctx, p.Name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, corrupt(fmt.Errorf("part %d is missing", i), "the archive was partly deleted")
	}
	if err != nil {
		return nil, j.classify("read", key, err)
	}
	if int64(info.Size) != p.Size {
		return nil, corrupt(fmt.Errorf("part %d has %d bytes, the index says %d", i, info.Size, p.Size), "")
	}
	if p.Digest != "" && info.Digest != p.Digest {
		return nil, corrupt(fmt.Errorf("part %d has digest %s, the index says %s", i, info.Digest, p.Digest), "")
	}
	want, err := jetstream.DecodeObjectDigest(info.Digest)
	if err != nil || len(want) != sha256.Size {
		return nil, corrupt(fmt.Errorf("part %d: bad digest %q", i, info.Digest), "")
	}
	r := &jsPartReader{j: j, ctx: ctx, key: key, i: i, want: want, left: p.Size, chunks: uint64(info.Chunks),
		hashq: make(chan []byte, jsHashQueue), sum: make(chan []byte, 1)}
	go r.hash()
	if p.Size == 0 {
		return r, nil
	}
	// Not cancelled with ctx: a consumer created on the server after the request was
	// given up on would stay there until its inactive threshold.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	r.cons, err = j.js.OrderedConsumer(cctx, fmt.Sprintf(jsObjStream, j.cfg.Bucket), jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{fmt.Sprintf(jsObjChunkSubj, j.cfg.Bucket, info.NUID)},
		InactiveThreshold: time.Minute, // if this process dies, the server removes the consumer
		MaxResetAttempts:  3,
	})
	cancel()
	if err != nil {
		close(r.hashq)
		return nil, j.classify("read", key, err)
	}
	if err := ctx.Err(); err != nil {
		r.Close()
		return nil, j.classify("read", key, err)
	}
	if ci := r.cons.CachedInfo(); ci != nil && ci.NumPending < r.chunks {
		r.Close()
		return nil, corrupt(fmt.Errorf("part %d has %d of its %d chunks", i, ci.NumPending, r.chunks), "the archive was partly deleted")
	}
	// A window counted in messages: with PullMaxBytes the client allocates a buffer of a
	// million message pointers per consumer, which cost more CPU (zeroing it, and the
	// collector scanning it) than the reading.
	chunk := (p.Size + int64(r.chunks) - 1) / max(int64(r.chunks), 1)
	r.it, err = r.cons.Messages(jetstream.PullMaxMessages(min(max(jsWindow/max(chunk, 1), 2), 1024)))
	if err != nil {
		r.Close()
		return nil, j.classify("read", key, err)
	}
	r.unwatch = context.AfterFunc(ctx, r.it.Stop)
	return r, nil
}

func (r *jsPartReader) hash() {
	h := sha256.New()
	for b := range r.hashq {
		h.Write(b)
	}
	r.sum <- h.Sum(nil)
}

// next receives the part's next message into r.data and, with the last one, checks the
// digest.
func (r *jsPartReader) next() error {
	if r.err == nil {
		r.err = r.receive()
	}
	return r.err
}

func (r *jsPartReader) receive() error {
	for len(r.data) == 0 && r.left > 0 {
		if r.chunks == 0 {
			return r.j.err("read", r.key, withKind(ErrCorrupt, fmt.Errorf("part %d is shorter than its index says", r.i)), "")
		}
		m, err := r.it.Next()
		if err != nil {
			if r.ctx.Err() != nil {
				err = r.ctx.Err()
			}
			return r.j.classify("read", r.key, err)
		}
		d := m.Data()
		if int64(len(d)) > r.left {
			return r.j.err("read", r.key, withKind(ErrCorrupt, fmt.Errorf("part %d is longer than its index says", r.i)), "")
		}
		r.left -= int64(len(d))
		r.chunks--
		r.hashq <- d
		r.data = d
	}
	if r.left == 0 && !r.checked {
		close(r.hashq)
		r.hashq = nil
		if !bytes.Equal(<-r.sum, r.want) {
			return r.j.err("read", r.key, withKind(ErrCorrupt, fmt.Errorf("part %d: %w", r.i, jetstream.ErrDigestMismatch)), "")
		}
		r.checked = true
	}
	return nil
}

// take returns the part's next bytes, at most max of them, from one message; io.EOF
// at its end.
func (r *jsPartReader) take(max int64) ([]byte, error) {
	if err := r.next(); err != nil {
		return nil, err
	}
	if len(r.data) == 0 {
		return nil, io.EOF
	}
	b := r.data[:min(max, int64(len(r.data)))]
	r.data = r.data[len(b):]
	return b, nil
}

// Close stops the consumer and removes it from the server without waiting.
func (r *jsPartReader) Close() error {
	if r.hashq != nil {
		close(r.hashq)
		r.hashq = nil
	}
	if r.unwatch != nil {
		r.unwatch()
		r.unwatch = nil
	}
	if r.it != nil {
		r.it.Stop()
		r.it = nil
	}
	if r.cons != nil {
		if ci := r.cons.CachedInfo(); ci != nil {
			js, stream, name := r.j.js, fmt.Sprintf(jsObjStream, r.j.cfg.Bucket), ci.Name
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = js.DeleteConsumer(ctx, stream, name)
			}()
		}
		r.cons = nil
	}
	return nil
}
