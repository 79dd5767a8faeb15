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

// openPart opens part i, with a consumer of its own, positioned at skip bytes into it.
func (o *jsObject) openPart(i int, skip int64) (*jsPartReader, error) {
	r, err := o.j.readPart(o.ctx, o.key, i, o.idx.Parts[i])
	if err != nil {
		return nil, err
	}
	if err := r.skip(skip); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// indexed reports whether the index names the chunk subject of every part from i to
// last that has bytes.
func (o *jsObject) indexed(i, last int) bool {
	for ; i <= last; i++ {
		if p := o.idx.Parts[i]; p.Size > 0 && p.NUID == "" {
			return false
		}
	}
	return true
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
		s.perPart = !o.indexed(o.part(off), s.last)
	}
	return s, nil
}

// jsPrefetch is how many parts after the one being read a stream reading part by part
// opens ahead: opening one costs a consumer (and, for an index without chunk subjects,
// an info request), which the reader would otherwise wait for at every part boundary. An
// opened part holds at most jsWindow bytes until it is read.
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

// jsStream reads the parts of a range one after another. When the index names every
// part's chunk subject (written since 2026-12-07) one consumer delivers the chunks of all
// the parts of the range (a "run"); otherwise, or once the run found a part's chunks
// missing or out of order, each part has a consumer of its own, with the next jsPrefetch
// parts opened ahead. A part read to its end has its SHA-256 digest checked before its
// last message's bytes are returned (jsPartReader). (A WriteTo handing whole 512 KiB
// messages to io.Copy cost more CPU than Read's copies into the caller's buffer when
// writing to a file here, 2.9–3.5 against 2.2–3.0 CPU-s per GiB.)
type jsStream struct {
	o       *jsObject
	off     int64
	left    int64
	last    int // the last part of the range
	cur     *jsPartReader
	curN    int64       // bytes of the range left in cur
	run     *jsConsumer // the consumer of the range's parts, once opened
	perPart bool        // each part is read with a consumer of its own
	ahead   []*jsOpening
	next    int   // the next part to open ahead (0: none opened yet)
	err     error // the first error, returned from then on
}

// open makes the part holding s.off current (and, part by part, opens the ones after it
// ahead).
func (s *jsStream) open() error {
	i := s.o.part(s.off)
	skip := s.off - s.o.starts[i]
	if !s.perPart && s.run == nil {
		run, err := s.o.openRun(i, s.last)
		if err != nil {
			return err
		}
		s.run = run
		s.perPart = run == nil
	}
	if s.run != nil {
		r, err := s.o.j.partReader(s.o.ctx, s.o.key, i, s.o.idx.Parts[i], s.run)
		if err == nil {
			err = r.skip(skip)
		}
		if err != nil {
			if r != nil {
				r.Close()
			}
			return err
		}
		s.cur, s.curN = r, s.o.idx.Parts[i].Size-skip
		return nil
	}
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

// openRun opens one consumer on the chunk subjects of parts i to last, or returns nil
// when the stream holds fewer of their chunks than the index lists: the parts are then
// read one by one, each checked for its own chunks before any of it is read.
func (o *jsObject) openRun(i, last int) (*jsConsumer, error) {
	var subjects []string
	var chunks uint64
	for k := i; k <= last; k++ {
		if p := o.idx.Parts[k]; p.Size > 0 {
			subjects = append(subjects, fmt.Sprintf(jsObjChunkSubj, o.j.cfg.Bucket, p.NUID))
			chunks += uint64(p.Chunks)
		}
	}
	p := o.idx.Parts[i]
	c, err := o.j.consume(o.ctx, o.key, subjects, 0, jsChunkLen(p.Size, uint64(p.Chunks)))
	if err != nil {
		return nil, err
	}
	if !c.counted || c.pending < chunks {
		c.Close()
		return nil, nil
	}
	return c, nil
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
	if s.run != nil && s.cur.src != s.run {
		// The part left the run for a consumer of its own: the parts after it do too.
		s.run.Close()
		s.run, s.perPart = nil, true
	}
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
	if s.run != nil {
		s.run.Close()
		s.run = nil
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
// bytes). Parts are read instead with an ordered pull consumer asking for jsWindow bytes
// at a time from the first one — one consumer for all the parts of a range when the index
// names their chunk subjects, since the writer stores a part's chunks after the previous
// part's — and their messages' bytes are copied once, into the caller's buffer, while a
// goroutine of the reader hashes them. The digest is checked when a part's last message
// arrives, before any of its bytes are returned, against the digest in the index and, for
// an index that does not name the part's chunk subject (which the reader then takes from
// the part's info message), in the info message too (the one the object store's Get
// checks).
const (
	// jsWindow is about how many bytes a consumer asks for at a time (in whole messages;
	// it asks for more when half have arrived). A stream holds up to 1+jsPrefetch
	// windows.
	jsWindow = 8 << 20
	// jsHashQueue is how many messages may wait for the hashing goroutine.
	jsHashQueue = 32
)

// jsChunkLen is the size of a part's chunks.
func jsChunkLen(size int64, chunks uint64) int64 {
	return (size + int64(chunks) - 1) / max(int64(chunks), 1)
}

// jsConsumer is an ordered pull consumer of the chunk subjects of one or more parts.
type jsConsumer struct {
	j       *JetStream
	cons    jetstream.Consumer
	it      jetstream.MessagesContext
	unwatch func() bool
	pending uint64 // messages it had to deliver when created
	counted bool   // pending is known
}

// consume opens a consumer of subjects from stream sequence start (0: the first), asking
// for about jsWindow bytes of chunks of size chunk at a time.
func (j *JetStream) consume(ctx context.Context, key string, subjects []string, start uint64, chunk int64) (*jsConsumer, error) {
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects:    subjects,
		InactiveThreshold: time.Minute, // if this process dies, the server removes the consumer
		MaxResetAttempts:  3,
	}
	if start > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start
	}
	// Not cancelled with ctx: a consumer created on the server after the request was
	// given up on would stay there until its inactive threshold.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	cons, err := j.js.OrderedConsumer(cctx, fmt.Sprintf(jsObjStream, j.cfg.Bucket), cfg)
	cancel()
	if err != nil {
		return nil, j.classify("read", key, err)
	}
	c := &jsConsumer{j: j, cons: cons}
	if err := ctx.Err(); err != nil {
		c.Close()
		return nil, j.classify("read", key, err)
	}
	if ci := cons.CachedInfo(); ci != nil {
		c.pending, c.counted = ci.NumPending, true
	}
	// A window counted in messages: with PullMaxBytes the client allocates a buffer of a
	// million message pointers per consumer, which cost more CPU (zeroing it, and the
	// collector scanning it) than the reading.
	c.it, err = cons.Messages(jetstream.PullMaxMessages(min(max(jsWindow/max(chunk, 1), 2), 1024)))
	if err != nil {
		c.Close()
		return nil, j.classify("read", key, err)
	}
	c.unwatch = context.AfterFunc(ctx, c.it.Stop)
	return c, nil
}

// Close stops the consumer and removes it from the server without waiting.
func (c *jsConsumer) Close() {
	if c.unwatch != nil {
		c.unwatch()
		c.unwatch = nil
	}
	if c.it != nil {
		c.it.Stop()
		c.it = nil
	}
	if c.cons != nil {
		if ci := c.cons.CachedInfo(); ci != nil {
			js, stream, name := c.j.js, fmt.Sprintf(jsObjStream, c.j.cfg.Bucket), ci.Name
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = js.DeleteConsumer(ctx, stream, name)
			}()
		}
		c.cons = nil
	}
}

// jsPartReader reads one part, from a consumer of its own or from one it shares with the
// other parts of a range.
type jsPartReader struct {
	j      *JetStream
	ctx    context.Context
	key    string
	i      int
	subj   string      // its chunk subject
	src    *jsConsumer // where its messages come from
	own    bool        // src is the part's own
	want   []byte      // SHA-256 of the part
	left   int64       // bytes not yet received
	total  uint64      // the part's messages
	chunks uint64      // messages not yet received
	last   jetstream.Msg
	data   []byte // what is left of the last message
	hashq  chan []byte
	sum    chan []byte
	// checked: the digest was checked and matched
	checked bool
	err     error // the first error, returned from then on
}

func (j *JetStream) corrupt(key string, err error, hint string) error {
	return j.err("read", key, withKind(ErrCorrupt, err), hint)
}

// readPart opens part i (p in the index) of key with a consumer of its own. Its chunk
// subject, chunk count and digest come from the index or, for an index written before it
// had the subject, from the part's info message, checked against the index.
func (j *JetStream) readPart(ctx context.Context, key string, i int, p jsPart) (*jsPartReader, error) {
	if p.NUID == "" {
		info, err := j.obs.GetInfo(ctx, p.Name)
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			return nil, j.corrupt(key, fmt.Errorf("part %d is missing", i), "the archive was partly deleted")
		}
		if err != nil {
			return nil, j.classify("read", key, err)
		}
		if int64(info.Size) != p.Size {
			return nil, j.corrupt(key, fmt.Errorf("part %d has %d bytes, the index says %d", i, info.Size, p.Size), "")
		}
		if p.Digest != "" && info.Digest != p.Digest {
			return nil, j.corrupt(key, fmt.Errorf("part %d has digest %s, the index says %s", i, info.Digest, p.Digest), "")
		}
		p.Digest, p.NUID, p.Chunks = info.Digest, info.NUID, info.Chunks
	}
	r, err := j.partReader(ctx, key, i, p, nil)
	if err != nil || p.Size == 0 {
		return r, err
	}
	if err := r.ownConsumer(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// partReader makes a reader of part i (p in the index) whose messages come from src.
func (j *JetStream) partReader(ctx context.Context, key string, i int, p jsPart, src *jsConsumer) (*jsPartReader, error) {
	want, err := jetstream.DecodeObjectDigest(p.Digest)
	if err != nil || len(want) != sha256.Size {
		return nil, j.corrupt(key, fmt.Errorf("part %d: bad digest %q", i, p.Digest), "")
	}
	r := &jsPartReader{j: j, ctx: ctx, key: key, i: i, subj: fmt.Sprintf(jsObjChunkSubj, j.cfg.Bucket, p.NUID), src: src,
		want: want, left: p.Size, total: uint64(p.Chunks), chunks: uint64(p.Chunks),
		hashq: make(chan []byte, jsHashQueue), sum: make(chan []byte, 1)}
	go r.hash(r.hashq)
	return r, nil
}

// ownConsumer gives the part a consumer of its own, from the message after the last one
// received, after checking that the stream holds the chunks not yet received.
func (r *jsPartReader) ownConsumer() error {
	var start uint64
	if r.last != nil {
		md, err := r.last.Metadata()
		if err != nil {
			return r.j.classify("read", r.key, err)
		}
		start = md.Sequence.Stream + 1
	}
	c, err := r.j.consume(r.ctx, r.key, []string{r.subj}, start, jsChunkLen(r.left, r.chunks))
	if err != nil {
		return err
	}
	r.src, r.own = c, true
	if c.counted && c.pending < r.chunks {
		if have := r.total - r.chunks + c.pending; have > 0 {
			return r.j.corrupt(r.key, fmt.Errorf("part %d has %d of its %d chunks", r.i, have, r.total), "the archive was partly deleted")
		}
		return r.j.corrupt(r.key, fmt.Errorf("part %d is missing", r.i), "the archive was partly deleted")
	}
	return nil
}

// skip reads and hashes the part's first n bytes.
func (r *jsPartReader) skip(n int64) error {
	for n > 0 {
		b, err := r.take(n)
		if err != nil {
			return err
		}
		n -= int64(len(b))
	}
	return nil
}

// hash hashes what arrives on q (r.hashq, which receive and Close set to nil after
// closing it) and sends the sum.
func (r *jsPartReader) hash(q <-chan []byte) {
	h := sha256.New()
	for b := range q {
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
			return r.j.corrupt(r.key, fmt.Errorf("part %d is shorter than its index says", r.i), "")
		}
		m, err := r.src.it.Next()
		if err != nil {
			if r.ctx.Err() != nil {
				err = r.ctx.Err()
			}
			return r.j.classify("read", r.key, err)
		}
		if m.Subject() != r.subj {
			if r.own { // not reached: the consumer's filter is the part's subject
				return r.j.corrupt(r.key, fmt.Errorf("part %d: a message on %s", r.i, m.Subject()), "")
			}
			// A message of another part before this one's last (one of its chunks is
			// missing, or was stored after the next part's): the rest of the part, and
			// the parts after it, are read with consumers of their own.
			if err := r.ownConsumer(); err != nil {
				return err
			}
			continue
		}
		d := m.Data()
		if int64(len(d)) > r.left {
			return r.j.corrupt(r.key, fmt.Errorf("part %d is longer than its index says", r.i), "")
		}
		r.left -= int64(len(d))
		r.chunks--
		r.hashq <- d
		r.data, r.last = d, m
	}
	if r.left == 0 && !r.checked {
		close(r.hashq)
		r.hashq = nil
		if !bytes.Equal(<-r.sum, r.want) {
			return r.j.corrupt(r.key, fmt.Errorf("part %d: %w", r.i, jetstream.ErrDigestMismatch), "")
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

// Close stops the part's consumer, if it is its own.
func (r *jsPartReader) Close() error {
	if r.hashq != nil {
		close(r.hashq)
		r.hashq = nil
	}
	if r.own && r.src != nil {
		r.src.Close()
		r.src = nil
	}
	return nil
}
