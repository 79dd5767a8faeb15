package cluster

import (
	"context"
	"testing"
	"time"
)

// TestBulkConnStalled: a node's heartbeats and lease renewals go through
// while its archive connection is stalled in the middle of a large
// publish (a migration pushing to a link that stopped taking bytes: the
// proxy stops reading that connection). On one shared connection they
// waited for the publish's write, which holds the connection's lock, and
// the node's copies were frozen by its own fencer.
func TestBulkConnStalled(t *testing.T) {
	addr := freeAddr(t)
	join(t, Options{Node: "a", StateDir: t.TempDir(), Listen: addr, NodeTimeout: 3 * time.Second}, Capacity{})
	p := newBlackhole(t, addr)
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

	p.setStall("cedana b bulk")
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

	p.setStall("")
	select {
	case err := <-published:
		if err != nil {
			t.Fatalf("the publish failed once the link took bytes again: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the publish never finished once the link took bytes again")
	}
}
