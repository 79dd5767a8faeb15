package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// startNodes starts node n0 with the embedded server and count-1 more
// joined to it, all with the given node timeout.
func startNodes(t *testing.T, count int, timeout time.Duration) []*Node {
	t.Helper()
	addr := freeAddr(t)
	var nodes []*Node
	for i := 0; i < count; i++ {
		o := Options{Node: fmt.Sprintf("n%d", i), NodeTimeout: timeout}
		if i == 0 {
			o.StateDir, o.Listen = t.TempDir(), addr
		} else {
			o.URLs = []string{"nats://" + addr}
		}
		nodes = append(nodes, join(t, o, Capacity{}))
	}
	return nodes
}

// twoNodes returns the lease managers of two nodes with the given period.
func twoNodes(t *testing.T, period time.Duration) (*Leases, *Leases) {
	t.Helper()
	var ls []*Leases
	for _, n := range startNodes(t, 2, period) {
		l, err := n.Leases(context.Background(), period)
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	return ls[0], ls[1]
}

// TestLeaseExactlyOne: of many acquisitions at once, from two nodes,
// exactly one succeeds; the others are told the lease is held.
func TestLeaseExactlyOne(t *testing.T) {
	la, lb := twoNodes(t, 2*time.Second)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		won  []*Lease
		errs []error
	)
	for i := 0; i < 10; i++ {
		ls := la
		if i%2 == 1 {
			ls = lb
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := ls.Acquire(context.Background(), "job-1", 7)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				won = append(won, l)
			} else {
				errs = append(errs, err)
			}
		}()
	}
	wg.Wait()
	if len(won) != 1 {
		t.Fatalf("%d acquisitions succeeded, want exactly 1 (errors: %v)", len(won), errs)
	}
	for _, err := range errs {
		if !errors.Is(err, ErrLeaseHeld) {
			t.Errorf("a losing acquisition said %v, want ErrLeaseHeld", err)
		}
	}
	node, epoch, err := la.Holder(context.Background(), "job-1")
	if err != nil || node != won[0].Node || epoch != 7 {
		t.Errorf("holder %q epoch %d (%v), want %q epoch 7", node, epoch, err, won[0].Node)
	}
}

// TestLeaseRenewAndExpiry: a renewed lease stays held past its period; one
// that is no longer renewed can be taken by another node, but never before
// the holder's deadline has passed — the holder always stops first. The
// old holder's next renewal reports the loss.
func TestLeaseRenewAndExpiry(t *testing.T) {
	const period = 2 * time.Second
	la, lb := twoNodes(t, period)
	ctx := context.Background()
	l, err := la.Acquire(ctx, "job-2", 1)
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(2 * period); time.Now().Before(end); time.Sleep(period / 4) {
		if err := la.Renew(ctx, l); err != nil {
			t.Fatalf("renew: %v", err)
		}
		if _, err := lb.Acquire(ctx, "job-2", 2); !errors.Is(err, ErrLeaseHeld) {
			t.Fatalf("b acquired a lease a keeps renewing (err %v)", err)
		}
	}
	// a stops renewing (cut off, frozen, dead). b polls.
	deadline := l.Deadline()
	var taken *Lease
	for give := time.Now().Add(4 * period); time.Now().Before(give); time.Sleep(50 * time.Millisecond) {
		if taken, err = lb.Acquire(ctx, "job-2", 2); err == nil {
			break
		}
		if !errors.Is(err, ErrLeaseHeld) {
			t.Fatal(err)
		}
	}
	if taken == nil {
		t.Fatalf("b could not take the lease %v after a stopped renewing", 4*period)
	}
	if at := time.Now(); at.Before(deadline) {
		t.Fatalf("b took the lease at %v, before a's deadline %v: both could run", at.Format(time.StampMilli), deadline.Format(time.StampMilli))
	}
	if err := la.Renew(ctx, l); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("a's renewal after b took over: %v, want ErrLeaseLost", err)
	}
	if node, epoch, _ := la.Holder(ctx, "job-2"); node != "n1" || epoch != 2 {
		t.Errorf("holder %s epoch %d, want n1 epoch 2", node, epoch)
	}
}

// TestLeaseRelease: a released lease can be taken at once.
func TestLeaseRelease(t *testing.T) {
	la, lb := twoNodes(t, 5*time.Second)
	ctx := context.Background()
	l, err := la.Acquire(ctx, "job-3", 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := la.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if _, err := lb.Acquire(ctx, "job-3", 2); err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	if err := la.Renew(ctx, l); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("renewing a released lease: %v, want ErrLeaseLost", err)
	}
}

// TestLeaseAdopt: a restarted daemon (a new Leases of the same node) takes
// over the lease its predecessor held, at its epoch only; another node
// cannot, and a lease that is gone is lost.
func TestLeaseAdopt(t *testing.T) {
	la, lb := twoNodes(t, 5*time.Second)
	ctx := context.Background()
	old, err := la.Acquire(ctx, "job-4", 3)
	if err != nil {
		t.Fatal(err)
	}
	again := &Leases{node: la.node, period: la.period, kv: la.kv} // the next daemon of node a
	if _, err := again.Adopt(ctx, "job-4", 2); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("adopt at another epoch: %v, want ErrLeaseHeld", err)
	}
	if _, err := lb.Adopt(ctx, "job-4", 3); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("another node adopts: %v, want ErrLeaseHeld", err)
	}
	l, err := again.Adopt(ctx, "job-4", 3)
	if err != nil {
		t.Fatalf("adopt: %v", err)
	}
	if time.Until(l.Deadline()) <= 0 {
		t.Errorf("adopted lease's deadline %v is past", l.Deadline())
	}
	if err := again.Renew(ctx, l); err != nil {
		t.Fatalf("renew the adopted lease: %v", err)
	}
	if err := la.Renew(ctx, old); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("the old daemon's handle still renews: %v, want ErrLeaseLost", err)
	}
	if err := again.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if _, err := again.Adopt(ctx, "job-4", 3); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("adopt a released lease: %v, want ErrLeaseLost", err)
	}
}
