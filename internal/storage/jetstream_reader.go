package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"

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
func (o *jsObject) openPart(i int, skip int64) (io.ReadCloser, error) {
	r, err := o.j.obs.Get(o.ctx, o.idx.Parts[i].Name)
	if err != nil {
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			return nil, o.j.err("read", o.key, withKind(ErrCorrupt, fmt.Errorf("part %d is missing", i)), "the archive was partly deleted")
		}
		return nil, o.j.classify("read", o.key, err)
	}
	if skip > 0 {
		if _, err := io.CopyN(io.Discard, r, skip); err != nil {
			r.Close()
			return nil, o.j.classify("read", o.key, err)
		}
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

// jsPrefetch is how many parts after the one being read a stream opens ahead: each
// opening costs two requests and the start of a consumer, which the reader would
// otherwise wait for at every part boundary. An opened part holds at most the server's
// first flow-control window (2 MiB) until it is read, since nothing acknowledges it.
const jsPrefetch = 2

// jsOpening is a part being opened in the background.
type jsOpening struct {
	i    int
	done chan struct{}
	r    io.ReadCloser
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
// opened ahead. A part read to its end has its SHA-256 digest checked by the client
// before its last bytes are returned.
type jsStream struct {
	o     *jsObject
	off   int64
	left  int64
	last  int // the last part of the range
	cur   io.ReadCloser
	curN  int64 // bytes left in cur
	ahead []*jsOpening
	next  int // the next part to open ahead (0: none opened yet)
}

// open makes the part holding s.off current and opens the ones after it ahead.
func (s *jsStream) open() error {
	i := s.o.part(s.off)
	skip := s.off - s.o.starts[i]
	var r io.ReadCloser
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

func (s *jsStream) Read(p []byte) (int, error) {
	if s.left <= 0 {
		return 0, io.EOF
	}
	if s.cur == nil {
		if err := s.open(); err != nil {
			return 0, err
		}
	}
	if lim := min(s.left, s.curN); int64(len(p)) > lim {
		p = p[:lim]
	}
	n, err := s.cur.Read(p)
	s.off += int64(n)
	s.left -= int64(n)
	s.curN -= int64(n)
	if err != nil && err != io.EOF {
		return n, s.o.j.classify("read", s.o.key, err)
	}
	if err == io.EOF && s.curN > 0 {
		return n, s.o.j.err("read", s.o.key, withKind(ErrCorrupt, io.ErrUnexpectedEOF), "a part is shorter than its index says")
	}
	if s.curN == 0 {
		// End of this part: read on to its EOF, where the client verifies its digest.
		for err != io.EOF {
			var one [1]byte
			var m int
			m, err = s.cur.Read(one[:])
			if m > 0 {
				return n, s.o.j.err("read", s.o.key, withKind(ErrCorrupt, errors.New("a part is longer than its index says")), "")
			}
			if err != nil && err != io.EOF {
				return n, s.o.j.classify("read", s.o.key, err)
			}
		}
		s.cur.Close()
		s.cur = nil
	}
	if s.left == 0 {
		return n, io.EOF
	}
	return n, nil
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

