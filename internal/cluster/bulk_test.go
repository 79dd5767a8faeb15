package cluster

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stallProxy forwards TCP connections to a NATS server, and stops reading
// what the client sends on the connections whose CONNECT names match, while
// stalled: the client's writes then block once the socket buffers are
// full, as on a link that is cut or far slower than the sender.
type stallProxy struct {
	l       net.Listener
	target  string
	match   []byte
	stalled atomic.Bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
}

func newStallProxy(t *testing.T, target, name string) *stallProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{l: l, target: target, match: []byte(`"name":"` + name + `"`)}
	p.wg.Go(p.serve)
	t.Cleanup(p.close)
	return p
}

func (p *stallProxy) addr() string { return p.l.Addr().String() }

func (p *stallProxy) close() {
	p.stalled.Store(false)
	p.l.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *stallProxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		p.wg.Go(func() { io.Copy(c, s) })
		p.wg.Go(func() { p.forward(c, s) })
	}
}

// forward copies the client's bytes to the server, pausing while stalled
// if the connection's CONNECT (the client's first line) names p.match.
func (p *stallProxy) forward(c, s net.Conn) {
	buf := make([]byte, 32<<10)
	var first []byte
	matched, known := false, false
	for {
		for known && matched && p.stalled.Load() {
			time.Sleep(10 * time.Millisecond)
		}
		n, err := c.Read(buf)
		if n > 0 {
			if !known {
				first = append(first, buf[:n]...)
				if i := bytes.Index(first, []byte("\r\n")); i >= 0 {
					known, matched = true, bytes.Contains(first[:i], p.match)
				}
			}
			if _, werr := s.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			s.Close()
			return
		}
	}
}

// TestBulkConnStalled: a node's heartbeats and lease renewals go through
// while its archive connection is stalled in the middle of a large
// publish (a migration pushing to a link that stopped taking bytes). On
// one shared connection they waited for the publish's write, which holds
// the connection's lock, and the node's copies were frozen by its own
// fencer.
func TestBulkConnStalled(t *testing.T) {
	addr := freeAddr(t)
	join(t, Options{Node: "a", StateDir: t.TempDir(), Listen: addr, NodeTimeout: 3 * time.Second}, Capacity{})
	p := newStallProxy(t, addr, "cedana b bulk")
	b := join(t, Options{Node: "b", URLs: []string{"nats://" + p.addr()}, NodeTimeout: 3 * time.Second}, Capacity{})
	if b.BulkConn() == b.Conn() {
		t.Fatal("the node's archive bytes share its control connection")
	}
	ls, err := b.Leases(context.Background(), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	l, err := ls.Acquire(context.Background(), "job-1", 1)
	if err != nil {
		t.Fatal(err)
	}

	p.stalled.Store(true)
	published := make(chan error, 1)
	go func() {
		chunk := make([]byte, 512<<10)
		for range 128 { // 64 MiB: far more than the socket buffers hold
			if err := b.BulkConn().Publish("cedana.test.bulk", chunk); err != nil {
				published <- err
				return
			}
		}
		published <- nil
	}()
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-published:
		t.Fatalf("64 MiB published through a stalled connection (%v): the stall does not hold", err)
	default:
	}

	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		start := time.Now()
		err := ls.Renew(ctx, l)
		if err == nil {
			err = b.Beat(ctx)
		}
		cancel()
		if took := time.Since(start); err != nil || took > time.Second {
			t.Fatalf("renewal and heartbeat %d with the archive connection stalled: %v after %v, want done within 1s", i, err, took.Round(time.Millisecond))
		}
		time.Sleep(200 * time.Millisecond)
	}

	p.stalled.Store(false)
	select {
	case err := <-published:
		if err != nil {
			t.Fatalf("the publish failed once the link took bytes again: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the publish never finished once the link took bytes again")
	}
}
