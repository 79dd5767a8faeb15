package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// blackhole is a TCP proxy that can cut a node off: while cut it forwards
// nothing (connections stay open, as in a partition, and new ones hang);
// healing closes what it held so that clients reconnect cleanly. It can
// also stall the connections a client names (setStall): it stops reading
// what they send, so the client's writes block once the socket buffers
// are full, as on a link far slower than the sender.
type blackhole struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	stall  []byte // `"name":"…"` of the NATS connections not read from
	conns  []net.Conn
}

func newBlackhole(t *testing.T, target string) *blackhole {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{l: l, target: target}
	t.Cleanup(func() { l.Close(); b.setStall(""); b.closeAll() })
	go b.serve()
	return b
}

func (b *blackhole) addr() string { return b.l.Addr().String() }

func (b *blackhole) serve() {
	for {
		c, err := b.l.Accept()
		if err != nil {
			return
		}
		go func() {
			up, err := net.Dial("tcp", b.target)
			if err != nil {
				c.Close()
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, c, up)
			b.mu.Unlock()
			go b.pipe(up, c, true)
			b.pipe(c, up, false)
		}()
	}
}

// pipe copies src to dst, dropping everything while cut. From a client,
// it stops reading while the connection's CONNECT (its first line) names
// the stalled connection.
func (b *blackhole) pipe(dst, src net.Conn, fromClient bool) {
	buf := make([]byte, 32<<10)
	var first []byte // from a client, until its first line is complete
	for {
		for fromClient && first != nil && b.stalled(first) {
			time.Sleep(10 * time.Millisecond)
		}
		n, err := src.Read(buf)
		if fromClient && n > 0 && (first == nil || !bytes.Contains(first, []byte("\r\n"))) {
			first = append(first, buf[:n]...)
		}
		if n > 0 {
			b.mu.Lock()
			cut := b.cut
			b.mu.Unlock()
			if !cut {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			if err != io.EOF {
				dst.Close()
			}
			return
		}
	}
}

// stalled reports whether the connection whose first bytes are first is
// to be stalled now.
func (b *blackhole) stalled(first []byte) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	line, _, complete := bytes.Cut(first, []byte("\r\n"))
	return complete && b.stall != nil && bytes.Contains(line, b.stall)
}

// setStall stalls the connections named name ("": none).
func (b *blackhole) setStall(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stall = nil
	if name != "" {
		b.stall = []byte(`"name":"` + name + `"`)
	}
}

func (b *blackhole) setCut(cut bool) {
	b.mu.Lock()
	b.cut = cut
	b.mu.Unlock()
	if !cut {
		b.closeAll()
	}
}

func (b *blackhole) closeAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.conns {
		c.Close()
	}
	b.conns = nil
}

// recordingFence records what the fencer did to each job, and when.
type recordingFence struct {
	mu     sync.Mutex
	events []fenceEvent
}

type fenceEvent struct {
	op, job string
	at      time.Time
}

func (r *recordingFence) add(op, job string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fenceEvent{op, job, time.Now()})
	return nil
}
func (r *recordingFence) Freeze(job string) error { return r.add("freeze", job) }
func (r *recordingFence) Thaw(job string) error   { return r.add("thaw", job) }
func (r *recordingFence) Kill(job string) error   { return r.add("kill", job) }

func (r *recordingFence) first(op string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e.op == op {
			return e.at, true
		}
	}
	return time.Time{}, false
}

func (r *recordingFence) ops() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		out = append(out, e.op)
	}
	return out
}

// partitioned starts node a with the embedded server and node b reaching
// it through a blackhole; b owns job "job-p" and fences it.
func partitioned(t *testing.T, period time.Duration) (bh *blackhole, la *Leases, ja *Jobs, fence *recordingFence, rec JobRecord) {
	t.Helper()
	bh, la, ja, fence, recs := partitionedN(t, period, 1)
	return bh, la, ja, fence, recs[0]
}

// partitionedN is partitioned with count jobs, job-p, job-p1, job-p2…
func partitionedN(t *testing.T, period time.Duration, count int) (bh *blackhole, la *Leases, ja *Jobs, fence *recordingFence, recs []JobRecord) {
	t.Helper()
	addr := freeAddr(t)
	a := join(t, Options{Node: "a", StateDir: t.TempDir(), Listen: addr, NodeTimeout: period}, Capacity{})
	bh = newBlackhole(t, addr)
	b := join(t, Options{Node: "b", URLs: []string{"nats://" + bh.addr()}, NodeTimeout: period}, Capacity{})
	ctx := context.Background()
	var err error
	if la, err = a.Leases(ctx, period); err != nil {
		t.Fatal(err)
	}
	if ja, err = a.Jobs(ctx); err != nil {
		t.Fatal(err)
	}
	lb, err := b.Leases(ctx, period)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := b.Jobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fence = &recordingFence{}
	f := NewFencer(lb, jb, fence, nil)
	for i := 0; i < count; i++ {
		id := "job-p"
		if i > 0 {
			id = fmt.Sprintf("job-p%d", i)
		}
		rec, err := jb.Create(ctx, JobRecord{ID: id, Failover: true})
		if err != nil {
			t.Fatal(err)
		}
		l, err := lb.Acquire(ctx, rec.ID, rec.Epoch)
		if err != nil {
			t.Fatal(err)
		}
		f.Hold(l)
		recs = append(recs, rec)
	}
	fctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go f.Run(fctx, nil)
	return bh, la, ja, fence, recs
}

// TestFenceCutOffNode: a node cut off from NATS (connections black-holed)
// freezes its copy before any other node can claim the job; once it can
// reach NATS again and sees the newer epoch, it kills the copy, never
// having thawed it.
func TestFenceCutOffNode(t *testing.T) {
	const period = 2 * time.Second
	bh, la, ja, fence, rec := partitioned(t, period)
	time.Sleep(2 * period)
	if ops := fence.ops(); len(ops) != 0 {
		t.Fatalf("fenced a healthy node: %v", ops)
	}
	bh.setCut(true)
	cutAt := time.Now()
	ctx := context.Background()
	var claimedAt time.Time
	for end := time.Now().Add(4 * period); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if _, _, err := ja.Claim(ctx, la, rec); err == nil {
			claimedAt = time.Now()
			break
		} else if !errors.Is(err, ErrLeaseHeld) {
			t.Fatal(err)
		}
	}
	if claimedAt.IsZero() {
		t.Fatalf("node a could not claim the job %v after b was cut off", 4*period)
	}
	frozenAt, ok := fence.first("freeze")
	if !ok || !frozenAt.Before(claimedAt) {
		t.Fatalf("b froze at %v (%v), a claimed at %v: the copy must be frozen before anyone can claim", frozenAt, ok, claimedAt)
	}
	if d := frozenAt.Sub(cutAt); d > period {
		t.Errorf("b froze %v after the cut, want within one lease period", d)
	}
	bh.setCut(false)
	eventually(t, 3*period, "the stale copy killed", func() bool { _, ok := fence.first("kill"); return ok })
	if _, thawed := fence.first("thaw"); thawed {
		t.Errorf("the stale copy was thawed: %v", fence.ops())
	}
}

// TestFenceOutageWithoutTakeover: a node cut off for longer than its
// deadline freezes; if nobody claimed meanwhile, it takes its lease again
// and thaws the copy.
func TestFenceOutageWithoutTakeover(t *testing.T) {
	const period = 2 * time.Second
	bh, _, _, fence, _ := partitioned(t, period)
	bh.setCut(true)
	eventually(t, 2*period, "the copy frozen", func() bool { _, ok := fence.first("freeze"); return ok })
	time.Sleep(period) // the lease expires on the server meanwhile
	bh.setCut(false)
	eventually(t, 4*period, "the copy thawed", func() bool { _, ok := fence.first("thaw"); return ok })
	if _, killed := fence.first("kill"); killed {
		t.Errorf("killed although nobody took the job: %v", fence.ops())
	}
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("not within %v: %s", d, what)
}

// TestFenceManyJobs: with 50 jobs on a cut-off node, every copy is frozen
// before its lease can expire on the server: hanging renewals of some
// jobs do not delay the freezing of others.
func TestFenceManyJobs(t *testing.T) {
	const period, jobs = 2 * time.Second, 50
	bh, _, _, fence, _ := partitionedN(t, period, jobs)
	time.Sleep(period / 2)
	bh.setCut(true)
	cutAt := time.Now()
	eventually(t, 2*period, "every copy frozen", func() bool {
		n := 0
		for _, op := range fence.ops() {
			if op == "freeze" {
				n++
			}
		}
		return n == jobs
	})
	// The server expires a lease a full period after its last renewal,
	// which was at the cut at the latest.
	if d := time.Since(cutAt); d >= period {
		t.Errorf("the last of %d copies froze %v after the cut, want before the lease period %v", jobs, d, period)
	}
}

// hangingKV is a lease bucket whose Update (a renewal) hangs, whatever
// its context says, until release is closed: a NATS connection wedged
// behind a large publish to a server that was cut off holds every other
// call of the connection for as long as the write blocks.
type hangingKV struct {
	jetstream.KeyValue
	hang    atomic.Bool
	release chan struct{}
}

func (k *hangingKV) Update(ctx context.Context, key string, value []byte, last uint64) (uint64, error) {
	if k.hang.Load() {
		<-k.release
		return 0, context.DeadlineExceeded
	}
	return k.KeyValue.Update(ctx, key, value, last)
}

// TestFenceRenewalHangs: a renewal that hangs past its own timeout does
// not hold up the fencer's rounds: the copy is frozen at its deadline, as
// when the renewal fails at once.
func TestFenceRenewalHangs(t *testing.T) {
	const period = 2 * time.Second
	addr := freeAddr(t)
	n := join(t, Options{Node: "a", StateDir: t.TempDir(), Listen: addr, NodeTimeout: period}, Capacity{})
	ctx := context.Background()
	ls, err := n.Leases(ctx, period)
	if err != nil {
		t.Fatal(err)
	}
	js, err := n.Jobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kv := &hangingKV{KeyValue: ls.kv, release: make(chan struct{})}
	ls.kv = kv
	t.Cleanup(func() { close(kv.release) })
	fence := &recordingFence{}
	f := NewFencer(ls, js, fence, nil)
	rec, err := js.Create(ctx, JobRecord{ID: "job-h"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := ls.Acquire(ctx, rec.ID, rec.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	f.Hold(l)
	fctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	go f.Run(fctx, nil)
	time.Sleep(period)
	if ops := fence.ops(); len(ops) != 0 {
		t.Fatalf("fenced a healthy lease: %v", ops)
	}
	kv.hang.Store(true)
	hungAt := time.Now()
	eventually(t, 2*period, "the copy frozen while its renewal hangs", func() bool { _, ok := fence.first("freeze"); return ok })
	at, _ := fence.first("freeze")
	if d := at.Sub(hungAt); d > period {
		t.Errorf("frozen %v after the renewals began to hang, want within one lease period (%v)", d, period)
	}
}
