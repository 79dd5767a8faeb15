package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// The writer stores each part as the object store's own Put does — chunk messages on
// "$O.<bucket>.C.<nuid>", then one info message on "$O.<bucket>.M.<base64url(name)>" with
// the size, chunk count and SHA-256 digest, rolling up older ones — so parts stay readable
// by the standard Get, which checks the digest. It differs from calling Put per part,
// which is what brings its upload near a single Put of the same bytes:
//   - Write copies the caller's bytes once, into chunk-sized buffers; one goroutine hashes
//     and publishes them (nats.go copies each into its write buffer), so the caller's own
//     work (compression) overlaps with hashing and publishing. There is no part buffer.
//   - Parts are published one after another on one stream of async publishes, with no
//     request before each part and no wait at its end, so a part's chunks are contiguous
//     in the stream (with 4 parts in flight, deleting one purged every fourth message of
//     blocks shared with the 3 others, and replacing an archive cost the server more).
//   - The bytes not yet acknowledged are bounded (jsMaxUnacked), not the parts in flight.
const (
	jsObjStream    = "OBJ_%s"     // bucket: the object store's stream, as nats.go names it
	jsObjChunkSubj = "$O.%s.C.%s" // bucket, nuid
	jsObjMetaSubj  = "$O.%s.M.%s" // bucket, base64url(name)
	// jsMaxUnacked bounds the bytes published and not yet acknowledged. The stream queues
	// at most 128 MiB of inbound messages and answers more with 429 "too many requests"
	// (nats.go's single Put of 256 MiB ran into it); 32 MiB keeps the server busy.
	jsMaxUnacked = 32 << 20
	// jsQueuedChunks is how many filled chunks may wait for the publisher.
	jsQueuedChunks = 4
)

// Create implements Backend.
func (j *JetStream) Create(ctx context.Context, key string) (Writer, error) {
	if err := CheckKey(key); err != nil {
		return nil, j.err("create", key, err, "")
	}
	// A JetStream context of its own, as nats.go's Put makes one per object: its reply
	// subscription is removed at the end, and its ack timeout is the same as Put's.
	var opts []jetstream.JetStreamOpt
	if _, ok := ctx.Deadline(); !ok {
		opts = append(opts, jetstream.WithPublishAsyncTimeout(j.js.Options().DefaultTimeout))
	}
	pub, err := jetstream.New(j.js.Conn(), opts...)
	if err != nil {
		return nil, j.classify("create", key, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &jsWriter{j: j, ctx: ctx, cancel: cancel, key: key, upload: nuid.Next(),
		queue: make(chan jsChunk, jsQueuedChunks), free: make(chan []byte, jsQueuedChunks+2),
		done: make(chan struct{}), p: jsPublisher{pub: pub, h: sha256.New()}}
	go w.publish()
	return w, nil
}

// jsWriter is used by one goroutine (the caller's); its publisher runs on another.
type jsWriter struct {
	j      *JetStream
	ctx    context.Context
	cancel context.CancelFunc
	key    string
	upload string

	cur     []byte        // the chunk being filled
	inPart  int64         // bytes of the current part handed to the publisher
	written int64         // bytes handed to the publisher
	queue   chan jsChunk  // filled chunks, to the publisher
	free    chan []byte   // chunk buffers the publisher is done with
	closed  bool          // queue is closed
	done    chan struct{} // closed when the publisher has returned
	mu      sync.Mutex
	err     error // first failure, from either side: every later call returns it
	ended   bool  // committed or aborted

	p jsPublisher // the publisher's: read by the caller only after done
}

// jsChunk is a filled chunk; partEnd marks the last of its part (b may then be empty).
type jsChunk struct {
	b       []byte
	partEnd bool
}

// jsPublisher is the publishing side of a writer.
type jsPublisher struct {
	pub jetstream.JetStream
	// The part being published: its NUID ("" before its first chunk), bytes and chunks so
	// far, and the digest of its bytes.
	nuid   string
	psize  int64
	chunks uint32
	h      hash.Hash

	unacked      []unacked // oldest first
	unackedBytes int

	size  int64
	parts []jsPart // finished parts (their info message published)
	nuids []string // NUID of every part started, the current one included
}

type unacked struct {
	f jetstream.PubAckFuture
	n int
}

func (w *jsWriter) firstErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *jsWriter) fail(err error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
	}
	return w.err
}

func (w *jsWriter) Write(p []byte) (int, error) {
	if w.ended {
		return 0, w.j.err("write", w.key, ErrClosed, "")
	}
	if err := w.firstErr(); err != nil {
		return 0, err
	}
	n := len(p)
	for len(p) > 0 {
		if w.cur == nil {
			select {
			case w.cur = <-w.free:
			default:
				w.cur = make([]byte, 0, jsChunkSize)
			}
		}
		want := int(min(int64(jsChunkSize), w.j.cfg.PartSize-w.inPart)) // the chunk's size
		k := min(want-len(w.cur), len(p))
		w.cur = append(w.cur, p[:k]...)
		p = p[k:]
		if len(w.cur) == want {
			if err := w.hand(w.inPart+int64(want) == w.j.cfg.PartSize); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, nil
}

// hand queues the current chunk for the publisher, unless the publisher has failed.
func (w *jsWriter) hand(partEnd bool) error {
	if err := w.firstErr(); err != nil {
		return err
	}
	c := jsChunk{b: w.cur, partEnd: partEnd}
	select {
	case w.queue <- c:
	case <-w.ctx.Done():
		return w.fail(w.j.classify("write", w.key, w.ctx.Err()))
	}
	w.cur = nil
	w.inPart += int64(len(c.b))
	w.written += int64(len(c.b))
	if partEnd {
		w.inPart = 0
	}
	return nil
}

// publish is the publisher's loop: it publishes the queued chunks, then waits for every
// ack. After a failure it only recycles what is queued.
func (w *jsWriter) publish() {
	defer close(w.done)
	for c := range w.queue {
		if w.firstErr() == nil {
			if err := w.publishChunk(c); err != nil {
				w.fail(err)
			}
		}
		if cap(c.b) == jsChunkSize {
			select {
			case w.free <- c.b[:0]:
			default:
			}
		}
	}
	for len(w.p.unacked) > 0 && w.firstErr() == nil {
		if err := w.waitOldest(); err != nil {
			w.fail(err)
		}
	}
}

// publishChunk publishes c as the next chunk of the current part, and finishes the part
// when c is its last. c.b is not kept: nats.go copies it into its write buffer, and
// retries (which would publish it again, recycled by then) are off.
func (w *jsWriter) publishChunk(c jsChunk) error {
	p := &w.p
	if p.nuid == "" {
		p.nuid = nuid.Next()
		p.nuids = append(p.nuids, p.nuid)
	}
	if len(c.b) > 0 {
		p.h.Write(c.b)
		m := &nats.Msg{Subject: fmt.Sprintf(jsObjChunkSubj, w.j.cfg.Bucket, p.nuid), Data: c.b}
		if err := w.publishMsg(m); err != nil {
			return err
		}
		p.psize += int64(len(c.b))
		p.chunks++
	}
	if c.partEnd {
		return w.finishPart()
	}
	return nil
}

// finishPart publishes the current part's info message (as nats.go's Put does, rolling
// up older info messages of the name) and starts the next part.
func (w *jsWriter) finishPart() error {
	p := &w.p
	name := fmt.Sprintf("%s%s/%06d", jsPartsPrefix, w.upload, len(p.parts))
	info := jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{Name: name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: jsChunkSize},
			Metadata: map[string]string{metaUpload: w.upload}},
		Bucket: w.j.cfg.Bucket, NUID: p.nuid, Size: uint64(p.psize), Chunks: p.chunks,
		Digest: jetstream.GetObjectDigestValue(p.h),
	}
	data, err := json.Marshal(info)
	if err != nil {
		return w.j.err("write", w.key, err, "")
	}
	m := nats.NewMsg(fmt.Sprintf(jsObjMetaSubj, w.j.cfg.Bucket, base64.URLEncoding.EncodeToString([]byte(name))))
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	m.Data = data
	if err := w.publishMsg(m); err != nil {
		return err
	}
	p.parts = append(p.parts, jsPart{Name: name, Size: p.psize, Digest: info.Digest, NUID: p.nuid, Chunks: p.chunks})
	p.size += p.psize
	p.nuid, p.psize, p.chunks = "", 0, 0
	p.h.Reset()
	return nil
}

// publishMsg publishes m asynchronously, after waiting for acks while jsMaxUnacked bytes
// are outstanding.
func (w *jsWriter) publishMsg(m *nats.Msg) error {
	p := &w.p
	for len(p.unacked) > 0 && p.unackedBytes+len(m.Data) > jsMaxUnacked {
		if err := w.waitOldest(); err != nil {
			return err
		}
	}
	f, err := p.pub.PublishMsgAsync(m, jetstream.WithRetryAttempts(0))
	if err != nil {
		return w.j.classify("write", w.key, err)
	}
	p.unacked = append(p.unacked, unacked{f, len(m.Data)})
	p.unackedBytes += len(m.Data)
	return nil
}

// waitOldest waits for the oldest outstanding publish to be acknowledged.
func (w *jsWriter) waitOldest() error {
	p := &w.p
	u := p.unacked[0]
	select {
	case <-u.f.Ok():
	case err := <-u.f.Err():
		return w.j.classify("write", w.key, err)
	case <-w.ctx.Done():
		return w.j.classify("write", w.key, w.ctx.Err())
	}
	p.unacked[0] = unacked{}
	p.unacked = p.unacked[1:]
	p.unackedBytes -= u.n
	return nil
}

// stop closes the queue and waits for the publisher to return.
func (w *jsWriter) stop() {
	if !w.closed {
		w.closed = true
		close(w.queue)
	}
	<-w.done
}

func (w *jsWriter) Commit() error {
	if w.ended {
		return w.j.err("commit", w.key, ErrClosed, "")
	}
	if err := w.commit(); err != nil {
		_ = w.abort()
		return err
	}
	w.ended = true
	w.cancel()
	w.p.pub.CleanupPublisher()
	return nil
}

func (w *jsWriter) commit() error {
	if err := w.firstErr(); err != nil {
		return err
	}
	// The last part ends here; an empty archive is one empty part.
	if len(w.cur) > 0 || w.inPart > 0 || w.written == 0 {
		if err := w.hand(true); err != nil {
			return err
		}
	}
	w.stop()
	if err := w.firstErr(); err != nil {
		return err
	}
	if err := w.ctx.Err(); err != nil {
		return w.j.classify("commit", w.key, err)
	}
	idx := jsIndex{Version: jsIndexVersion, Size: w.p.size, PartSize: w.j.cfg.PartSize, Upload: w.upload, Parts: w.p.parts}
	data, err := json.Marshal(idx)
	if err != nil {
		return w.j.err("commit", w.key, err, "")
	}
	// The index, written last, makes the archive visible. Put replaces an older object of
	// the same name; the older archive's parts are removed afterwards.
	old, _ := w.j.readIndex(w.ctx, w.key)
	if _, err := w.j.obs.Put(w.ctx, jetstream.ObjectMeta{
		Name: w.key,
		Metadata: map[string]string{metaIndex: strconv.Itoa(jsIndexVersion), metaUpload: w.upload,
			metaSize: strconv.FormatInt(w.p.size, 10)},
	}, bytes.NewReader(data)); err != nil {
		return w.j.classify("commit", w.key, err)
	}
	if old != nil && old.Upload != w.upload {
		w.j.deleteParts(context.WithoutCancel(w.ctx), old.Parts)
	}
	return nil
}

func (w *jsWriter) Abort() error {
	if w.ended {
		return nil
	}
	return w.abort()
}

// abort removes what was published: the info message of every finished part and the
// chunks of every part started, the current one included (it has no info message, so
// the object store's Delete cannot find its chunks).
func (w *jsWriter) abort() error {
	w.ended = true
	w.cancel()
	w.stop()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), 30*time.Second)
	defer cancel()
	// Let the outstanding publishes land (or fail) first, so that none is stored after
	// the purge.
	select {
	case <-w.p.pub.PublishAsyncComplete():
	case <-ctx.Done():
	}
	w.p.pub.CleanupPublisher()
	w.j.deleteParts(ctx, w.p.parts)
	if len(w.p.nuids) > len(w.p.parts) {
		if s, err := w.j.js.Stream(ctx, fmt.Sprintf(jsObjStream, w.j.cfg.Bucket)); err == nil {
			for _, id := range w.p.nuids[len(w.p.parts):] {
				_ = s.Purge(ctx, jetstream.WithPurgeSubject(fmt.Sprintf(jsObjChunkSubj, w.j.cfg.Bucket, id)))
			}
		}
	}
	return nil
}
