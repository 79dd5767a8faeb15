package storage

import (
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// ReadCache turns an Object into an io.ReaderAt fit for a reader that reads the same
// ranges more than once and in many small pieces — an archive reader checks an entry's
// digest and decodes it, two passes over the same bytes, and reads its directory in
// small steps. It fetches aligned blocks with one Stream each (one ranged GET on S3, one
// part on JetStream, decrypted in parallel when encrypted), keeps the most recently used
// blocks in memory and fetches the blocks after one being read ahead of time, so that a
// sequential reader seldom waits and a restore can start before the whole object has
// arrived. Nothing is written to disk; memory is bounded (see cacheBudget).
//
// Why the budget is large: an archive reader checks each entry's digest ahead of decoding
// it (so nothing unverified is restored), and the check runs ahead at network speed while
// the decoder waits for CRIU. With a few blocks of cache, every byte of a 270 MB archive
// was downloaded twice (541 MB fetched, measured on versitygw); with the whole compressed
// archive fitting in the budget, once.
type ReadCache struct {
	obj       Object
	size      int64
	blockSize int64
	maxBlocks int
	ahead     int

	mu      sync.Mutex
	blocks  map[int64]*cacheBlock
	tick    uint64
	touched map[int64]bool // blocks a read has landed in (see small)
	peeks   []*peekWindow  // the last few small windows, newest last

	fetched atomic.Int64

	// OnClose, if set, is called by Close with the bytes fetched (to log
	// how much a reader downloaded against the object's size).
	OnClose func(fetched int64)
}

type cacheBlock struct {
	done chan struct{}
	data []byte
	err  error
	used uint64
}

// Cache defaults: 16 MiB blocks (a JetStream part), at least 12 in memory, 2 read ahead.
const (
	cacheBlockSize = 16 << 20
	cacheMinBlocks = 12
	cacheAhead     = 2
)

// A small read that is the first to land in its block fetches only the
// peekSize-aligned window around it, not the block and the ones after it:
// opening an archive reads the local header of its first entry (30-odd
// bytes at offset 0) and the directory at the end, and the entries around
// them are streamed past the cache (StreamRange) — with whole blocks, a
// restore from S3 fetched 48 MiB more than the archive (block 0 and two
// read ahead), and decrypted them when encrypted. A second read in the
// same block takes the whole block, so a reader that goes on in small
// steps is not left making a request per window. The last peekKeep
// windows stay in memory (the directory is read in several small reads).
const (
	peekSize = 64 << 10
	peekKeep = 4
)

// peekWindow is a small fetched window [off, off+len(data)).
type peekWindow struct {
	off  int64
	data []byte
}

// cacheBudget is how much memory a ReadCache may hold: a quarter of the memory available
// now, at most 4 GiB, at least cacheMinBlocks blocks.
func cacheBudget() int64 {
	budget := int64(cacheMinBlocks * cacheBlockSize)
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return budget
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err == nil {
				budget = max(budget, min(kb<<10/4, 4<<30))
			}
		}
	}
	return budget
}

// NewReadCache returns a ReadCache over obj with the default block size and bounds.
// An object that reads any range cheaply (an encrypted file on local disk,
// whose reads cost only the chunks they decrypt) asks for smaller blocks
// and less read-ahead with cacheHint: opening an archive and extracting
// its small entries then decrypts a few MiB, not 16 MiB blocks and the two
// after them.
func NewReadCache(obj Object) *ReadCache {
	bs, ahead := int64(cacheBlockSize), cacheAhead
	if h, ok := obj.(interface{ cacheHint() (int64, int) }); ok {
		if b, a := h.cacheHint(); b > 0 {
			bs, ahead = b, a
		}
	}
	return &ReadCache{obj: obj, size: obj.Size(), blockSize: bs,
		maxBlocks: int(max(cacheBudget()/bs, cacheMinBlocks)), ahead: ahead,
		blocks: map[int64]*cacheBlock{}, touched: map[int64]bool{}}
}

// Size is the object's size.
func (c *ReadCache) Size() int64 { return c.size }

// Fetched is how many bytes were fetched from the object so far (more than its size when
// blocks were evicted and fetched again).
func (c *ReadCache) Fetched() int64 { return c.fetched.Load() }

// ReadAt implements io.ReaderAt.
func (c *ReadCache) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n := 0
	for len(p) > 0 {
		if off >= c.size {
			return n, io.EOF
		}
		i := off / c.blockSize
		if k, ok, err := c.small(p, off, i); ok {
			n += k
			if err == nil && k < len(p) {
				err = io.EOF
			}
			return n, err
		}
		b := c.block(i, true)
		<-b.done
		if b.err != nil {
			c.drop(i, b)
			return n, b.err
		}
		k := copy(p, b.data[off-i*c.blockSize:])
		p, off, n = p[k:], off+int64(k), n+k
	}
	return n, nil
}

// small serves a read of at most peekSize bytes from a small window when
// the window is in memory, or when it is the first read to land in block i
// and the block is not in memory (see peekSize); ok is false otherwise.
func (c *ReadCache) small(p []byte, off, i int64) (n int, ok bool, err error) {
	end := min(off+int64(len(p)), c.size)
	if len(p) == 0 || len(p) > peekSize || c.blockSize <= peekSize || (end-1)/c.blockSize != i {
		return 0, false, nil
	}
	c.mu.Lock()
	for k := len(c.peeks) - 1; k >= 0; k-- {
		w := c.peeks[k]
		if off >= w.off && end <= w.off+int64(len(w.data)) {
			c.mu.Unlock()
			return copy(p, w.data[off-w.off:end-w.off]), true, nil
		}
	}
	_, cached := c.blocks[i]
	first := !c.touched[i]
	c.touched[i] = true
	c.mu.Unlock()
	if cached || !first {
		return 0, false, nil
	}
	lo := off / peekSize * peekSize
	hi := min((end+peekSize-1)/peekSize*peekSize, c.size, (i+1)*c.blockSize)
	r, err := c.obj.Stream(lo, hi-lo)
	if err != nil {
		return 0, true, err
	}
	data := make([]byte, hi-lo)
	_, err = io.ReadFull(r, data)
	r.Close()
	if err != nil {
		return 0, true, err
	}
	c.fetched.Add(hi - lo)
	c.mu.Lock()
	if len(c.peeks) == peekKeep {
		c.peeks = append(c.peeks[:0], c.peeks[1:]...)
	}
	c.peeks = append(c.peeks, &peekWindow{off: lo, data: data})
	c.mu.Unlock()
	return copy(p, data[off-lo:end-lo]), true, nil
}

// block returns block i, starting its fetch (and, when read, those of the blocks after
// it) if needed.
func (c *ReadCache) block(i int64, read bool) *cacheBlock {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.get(i)
	if read {
		for k := int64(1); k <= int64(c.ahead); k++ {
			if (i+k)*c.blockSize < c.size {
				c.get(i + k)
			}
		}
	}
	return b
}

// get returns block i, starting its fetch when absent; c.mu is held.
func (c *ReadCache) get(i int64) *cacheBlock {
	c.tick++
	if b, ok := c.blocks[i]; ok {
		b.used = c.tick
		return b
	}
	c.evict()
	b := &cacheBlock{done: make(chan struct{}), used: c.tick}
	c.blocks[i] = b
	go c.fetch(i, b)
	return b
}

// evict drops the least recently used fetched blocks beyond the bound; c.mu is held.
func (c *ReadCache) evict() {
	for len(c.blocks) >= c.maxBlocks {
		var (
			victim int64 = -1
			oldest uint64
		)
		for i, b := range c.blocks {
			select {
			case <-b.done:
			default:
				continue // in flight
			}
			if victim < 0 || b.used < oldest {
				victim, oldest = i, b.used
			}
		}
		if victim < 0 {
			return // all in flight: go over the bound briefly
		}
		delete(c.blocks, victim)
	}
}

func (c *ReadCache) drop(i int64, b *cacheBlock) {
	c.mu.Lock()
	if c.blocks[i] == b {
		delete(c.blocks, i)
	}
	c.mu.Unlock()
}

func (c *ReadCache) fetch(i int64, b *cacheBlock) {
	defer close(b.done)
	off := i * c.blockSize
	n := min(c.blockSize, c.size-off)
	r, err := c.obj.Stream(off, n)
	if err != nil {
		b.err = err
		return
	}
	defer r.Close()
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		b.err = err
		return
	}
	c.fetched.Add(n)
	b.data = data
}

// StreamRange reads the n bytes at off with one Stream of the object (one
// ranged GET on S3, part after part on JetStream, decrypted on several
// cores when encrypted), past the cache: a reader that passes over a range
// once — an archive's streamed entry, see archive.SequentialSource —
// needs no copy of it kept, and keeping one costs fresh memory as large
// as the range (on this project's VMs, first-touched memory costs about
// 4 ms per MiB: more than decrypting it).
func (c *ReadCache) StreamRange(off, n int64) (io.ReadCloser, error) {
	r, err := c.obj.Stream(off, n)
	if err != nil {
		return nil, err
	}
	return &countedStream{ReadCloser: r, n: &c.fetched}, nil
}

// LendRange is StreamRange for a reader that can use the bytes where they
// lie (archive.LendingSource): when the object can lend them (an encrypted
// object opens its chunks into memory the reader borrows from, see
// encObject.Lend), the reader returned has Peek, Skip, Return, Stop and
// Window besides Read, and sum got every byte it returns; otherwise it is
// StreamRange's.
func (c *ReadCache) LendRange(off, n int64, window int, sum io.Writer) (io.ReadCloser, error) {
	lo, ok := c.obj.(interface {
		Lend(off, n int64, window int, sum io.Writer) (io.ReadCloser, error)
	})
	if !ok {
		return c.StreamRange(off, n)
	}
	r, err := lo.Lend(off, n, window, sum)
	if err != nil {
		return nil, err
	}
	if l, ok := r.(lender); ok {
		return &countedLender{lender: l, n: &c.fetched}, nil
	}
	return &countedStream{ReadCloser: r, n: &c.fetched}, nil
}

// Authenticated reports whether every byte read from the object is
// authenticated before it is returned (an encrypted object), so that an
// archive read through c need not hash a streamed entry again
// (archive.AuthenticatedSource).
func (c *ReadCache) Authenticated() bool {
	a, ok := c.obj.(interface{ Authenticated() bool })
	return ok && a.Authenticated()
}

// lender is a reader whose bytes can be borrowed in place (archive.Lender).
type lender interface {
	io.ReadCloser
	Peek(n int) ([]byte, error)
	Skip(n int)
	Return(n int)
	Stop()
	Window() int
}

var _ lender = (*lentStream)(nil)

// countedLender adds what is read or skipped to n.
type countedLender struct {
	lender
	n *atomic.Int64
}

func (s *countedLender) Read(p []byte) (int, error) {
	k, err := s.lender.Read(p)
	s.n.Add(int64(k))
	return k, err
}

func (s *countedLender) Skip(k int) {
	s.lender.Skip(k)
	s.n.Add(int64(k))
}

// countedStream adds what is read to n.
type countedStream struct {
	io.ReadCloser
	n *atomic.Int64
}

func (s *countedStream) Read(p []byte) (int, error) {
	k, err := s.ReadCloser.Read(p)
	s.n.Add(int64(k))
	return k, err
}

// Close closes the object and drops the cached blocks.
func (c *ReadCache) Close() error {
	c.mu.Lock()
	c.blocks, c.peeks = map[int64]*cacheBlock{}, nil
	c.mu.Unlock()
	if c.OnClose != nil {
		c.OnClose(c.fetched.Load())
	}
	return c.obj.Close()
}
