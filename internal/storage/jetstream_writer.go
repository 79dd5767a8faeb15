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
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// The writer stores each part as the object store's own Put does — chunk messages on
// "$O.<bucket>.C.<nuid>", then one info message on "$O.<bucket>.M.<base64url(name)>" with
// the size, chunk count and SHA-256 digest, rolling up older ones — so parts stay readable
// by the standard Get, which checks the digest. It differs from calling Put per part in
// three ways, which is what brings its upload near a single Put of the same bytes:
//   - chunks are published straight from the caller's bytes (no part buffer, no chunk
//     buffer except for pieces shorter than a chunk);
//   - parts are published one after another on one stream of async publishes, with no
//     request before each part and no wait at its end, so a part's chunks are contiguous
//     in the stream (deleting it removes whole message blocks, not every fourth message
//     of several blocks, which made the server compact them over and over);
//   - the bytes not yet acknowledged are bounded (jsMaxUnacked), not the parts in flight.
const (
	jsObjChunkSubj = "$O.%s.C.%s" // bucket, nuid: as nats.go's object store
	jsObjMetaSubj  = "$O.%s.M.%s" // bucket, base64url(name)
	// jsMaxUnacked bounds the bytes published and not yet acknowledged. The stream queues
	// at most 128 MiB of inbound messages and answers more with 429 "too many requests"
	// (nats.go's single Put of 256 MiB ran into it); 32 MiB keeps the server busy.
	jsMaxUnacked = 32 << 20
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
	return &jsWriter{j: j, ctx: ctx, cancel: cancel, key: key, upload: nuid.Next(), pub: pub,
		h: sha256.New(), chunk: make([]byte, 0, jsChunkSize)}, nil
}

type jsWriter struct {
	j      *JetStream
	ctx    context.Context
	cancel context.CancelFunc
	key    string
	upload string
	pub    jetstream.JetStream

	// The part being published: its NUID ("" before its first chunk), bytes and chunks so
	// far, and the digest of its bytes.
	nuid   string
	psize  int64
	chunks uint32
	h      hash.Hash
	// chunk collects pieces shorter than a chunk; full chunks are published from the
	// caller's bytes.
	chunk []byte

	unacked      []unacked // oldest first
	unackedBytes int

	size  int64
	parts []jsPart // finished parts (their info message published)
	nuids []string // NUID of every part started, the current one included
	err   error    // first failure: every later call returns it
	done  bool
}

type unacked struct {
	f jetstream.PubAckFuture
	n int
}

func (w *jsWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, w.j.err("write", w.key, ErrClosed, "")
	}
	if w.err != nil {
		return 0, w.err
	}
	n := len(p)
	for len(p) > 0 {
		want := int(min(int64(jsChunkSize), w.j.cfg.PartSize-w.psize)) // the next chunk's size
		if len(w.chunk) == 0 && len(p) >= want {
			if err := w.publishChunk(p[:want]); err != nil {
				return n - len(p), err
			}
			p = p[want:]
			continue
		}
		k := min(want-len(w.chunk), len(p))
		w.chunk = append(w.chunk, p[:k]...)
		p = p[k:]
		if len(w.chunk) == want {
			if err := w.publishChunk(w.chunk); err != nil {
				return n - len(p), err
			}
			w.chunk = w.chunk[:0]
		}
	}
	return n, nil
}

// publishChunk publishes b as the next chunk of the current part, and finishes the part
// when it is full. b is not kept: nats.go copies it into its write buffer, and retries
// (which would publish b again, maybe reused by then) are off.
func (w *jsWriter) publishChunk(b []byte) error {
	if w.nuid == "" {
		w.nuid = nuid.Next()
		w.nuids = append(w.nuids, w.nuid)
	}
	w.h.Write(b)
	m := &nats.Msg{Subject: fmt.Sprintf(jsObjChunkSubj, w.j.cfg.Bucket, w.nuid), Data: b}
	if err := w.publish(m); err != nil {
		return err
	}
	w.psize += int64(len(b))
	w.chunks++
	if w.psize == w.j.cfg.PartSize {
		return w.finishPart()
	}
	return nil
}

// finishPart publishes the current part's info message (as nats.go's Put does, rolling
// up older info messages of the name) and starts the next part.
func (w *jsWriter) finishPart() error {
	if w.nuid == "" { // an empty part: an object without chunks, as Put stores one
		w.nuid = nuid.Next()
		w.nuids = append(w.nuids, w.nuid)
	}
	name := fmt.Sprintf("%s%s/%06d", jsPartsPrefix, w.upload, len(w.parts))
	info := jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{Name: name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: jsChunkSize},
			Metadata: map[string]string{metaUpload: w.upload}},
		Bucket: w.j.cfg.Bucket, NUID: w.nuid, Size: uint64(w.psize), Chunks: w.chunks,
		Digest: jetstream.GetObjectDigestValue(w.h),
	}
	data, err := json.Marshal(info)
	if err != nil {
		return w.fail(w.j.err("write", w.key, err, ""))
	}
	m := nats.NewMsg(fmt.Sprintf(jsObjMetaSubj, w.j.cfg.Bucket, base64.URLEncoding.EncodeToString([]byte(name))))
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	m.Data = data
	if err := w.publish(m); err != nil {
		return err
	}
	w.parts = append(w.parts, jsPart{Name: name, Size: w.psize, Digest: info.Digest})
	w.size += w.psize
	w.nuid, w.psize, w.chunks = "", 0, 0
	w.h.Reset()
	return nil
}

// publish publishes m asynchronously, after waiting for acks while jsMaxUnacked bytes
// are outstanding.
func (w *jsWriter) publish(m *nats.Msg) error {
	for len(w.unacked) > 0 && w.unackedBytes+len(m.Data) > jsMaxUnacked {
		if err := w.waitOldest(); err != nil {
			return err
		}
	}
	f, err := w.pub.PublishMsgAsync(m, jetstream.WithRetryAttempts(0))
	if err != nil {
		return w.fail(w.j.classify("write", w.key, err))
	}
	w.unacked = append(w.unacked, unacked{f, len(m.Data)})
	w.unackedBytes += len(m.Data)
	return nil
}

// waitOldest waits for the oldest outstanding publish to be acknowledged.
func (w *jsWriter) waitOldest() error {
	u := w.unacked[0]
	select {
	case <-u.f.Ok():
	case err := <-u.f.Err():
		return w.fail(w.j.classify("write", w.key, err))
	case <-w.ctx.Done():
		return w.fail(w.j.classify("write", w.key, w.ctx.Err()))
	}
	w.unacked[0] = unacked{}
	w.unacked = w.unacked[1:]
	w.unackedBytes -= u.n
	return nil
}

func (w *jsWriter) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return w.err
}

func (w *jsWriter) Commit() error {
	if w.done {
		return w.j.err("commit", w.key, ErrClosed, "")
	}
	if err := w.commit(); err != nil {
		_ = w.abort()
		return err
	}
	w.done = true
	w.cancel()
	w.pub.CleanupPublisher()
	return nil
}

func (w *jsWriter) commit() error {
	if w.err != nil {
		return w.err
	}
	if len(w.chunk) > 0 {
		if err := w.publishChunk(w.chunk); err != nil {
			return err
		}
		w.chunk = w.chunk[:0]
	}
	if w.psize > 0 || len(w.parts) == 0 {
		if err := w.finishPart(); err != nil {
			return err
		}
	}
	for len(w.unacked) > 0 {
		if err := w.waitOldest(); err != nil {
			return err
		}
	}
	idx := jsIndex{Version: jsIndexVersion, Size: w.size, PartSize: w.j.cfg.PartSize, Upload: w.upload, Parts: w.parts}
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
			metaSize: strconv.FormatInt(w.size, 10)},
	}, bytes.NewReader(data)); err != nil {
		return w.j.classify("commit", w.key, err)
	}
	if old != nil && old.Upload != w.upload {
		w.j.deleteParts(context.WithoutCancel(w.ctx), old.Parts)
	}
	return nil
}

func (w *jsWriter) Abort() error {
	if w.done {
		return nil
	}
	return w.abort()
}

// abort removes what was published: the info message of every finished part and the
// chunks of every part started, the current one included (it has no info message, so
// the object store's Delete cannot find its chunks).
func (w *jsWriter) abort() error {
	w.done = true
	w.cancel()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), 30*time.Second)
	defer cancel()
	// Let the outstanding publishes land (or fail) first, so that none is stored after
	// the purge.
	select {
	case <-w.pub.PublishAsyncComplete():
	case <-ctx.Done():
	}
	w.pub.CleanupPublisher()
	w.j.deleteParts(ctx, w.parts)
	if len(w.nuids) > len(w.parts) {
		if s, err := w.j.js.Stream(ctx, "OBJ_"+w.j.cfg.Bucket); err == nil {
			for _, id := range w.nuids[len(w.parts):] {
				_ = s.Purge(ctx, jetstream.WithPurgeSubject(fmt.Sprintf(jsObjChunkSubj, w.j.cfg.Bucket, id)))
			}
		}
	}
	return nil
}
