package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// LeasesBucket holds one lease per job that runs on some node. Leases
// expire by the bucket's MaxAge (the lease period): a KV Update drops a
// per-key TTL, so renewals could not keep one alive (FACTS.md).
const LeasesBucket = "cedana_leases"

// Errors callers branch on.
var (
	// ErrLeaseHeld means another node holds the job's lease.
	ErrLeaseHeld = errors.New("the job's lease is held by another node")
	// ErrLeaseLost means a renewal found the lease expired or taken: the
	// holder must stop its copy until it knows whether someone else owns
	// the job now.
	ErrLeaseLost = errors.New("the job's lease was lost")
)

// Lease is a node's right to run one job, until Deadline.
type Lease struct {
	Job   string
	Node  string
	Epoch uint64

	rev    uint64        // the lease entry's revision, for the next CAS
	sent   time.Time     // when the last successful renewal was sent (monotonic)
	period time.Duration // lease period
}

type leaseValue struct {
	Node  string `json:"node"`
	Epoch uint64 `json:"epoch"`
}

// Deadline is when the holder must have frozen its copy if no renewal
// succeeded since: the last successful renewal's *send* time, by the local
// monotonic clock, plus the period less a fifth. The server expires the
// lease a full period after it *received* that renewal, so the holder
// always stops first, whatever the offset between their clocks
// (docs/cluster.md, rule 3).
func (l *Lease) Deadline() time.Time { return l.sent.Add(l.period - l.period/5) }

// Leases takes and renews job leases for one node.
type Leases struct {
	node   string
	period time.Duration
	kv     jetstream.KeyValue
}

// Leases returns the node's lease manager; period is the lease period
// (0: the node timeout).
func (n *Node) Leases(ctx context.Context, period time.Duration) (*Leases, error) {
	if period <= 0 {
		period = n.opts.NodeTimeout
	}
	if period < time.Second {
		return nil, fmt.Errorf("lease period %v is too short (at least 1s: the server expires keys by the second)", period)
	}
	kv, err := n.bucket(ctx, jetstream.KeyValueConfig{
		Bucket:      LeasesBucket,
		Description: "cedana job leases (docs/cluster.md)",
		History:     1,
		TTL:         period,
	})
	if err != nil {
		return nil, err
	}
	return &Leases{node: n.opts.Node, period: period, kv: kv}, nil
}

// Acquire takes the job's lease for epoch. It fails with ErrLeaseHeld
// while any node (this one included) holds it: a lease is only ever
// created where none exists, so of several nodes trying at once exactly
// one succeeds.
func (ls *Leases) Acquire(ctx context.Context, job string, epoch uint64) (*Lease, error) {
	v, err := json.Marshal(leaseValue{Node: ls.node, Epoch: epoch})
	if err != nil {
		return nil, err
	}
	sent := time.Now()
	rev, err := ls.kv.Create(ctx, job, v)
	// Replicated buckets may report the conflict as a revision mismatch.
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return nil, fmt.Errorf("job %s: %w", job, ErrLeaseHeld)
	}
	if err != nil {
		return nil, fmt.Errorf("take the lease of job %s: %w", job, err)
	}
	return &Lease{Job: job, Node: ls.node, Epoch: epoch, rev: rev, sent: sent, period: ls.period}, nil
}

// Renew extends the lease by one period. ErrLeaseLost means it expired or
// another node took it: the caller must keep its copy frozen.
func (ls *Leases) Renew(ctx context.Context, l *Lease) error {
	v, err := json.Marshal(leaseValue{Node: l.Node, Epoch: l.Epoch})
	if err != nil {
		return err
	}
	sent := time.Now()
	rev, err := ls.kv.Update(ctx, l.Job, v, l.rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) ||
		errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("job %s: %w", l.Job, ErrLeaseLost)
	}
	if err != nil {
		return fmt.Errorf("renew the lease of job %s: %w", l.Job, err)
	}
	l.rev, l.sent = rev, sent
	return nil
}

// Release gives the lease up (after the job stopped or moved), so that
// another node need not wait for it to expire.
//
// A renewal in flight when the caller copied l may have moved the lease to
// a newer revision: then the lease is deleted at that revision if it still
// names this node and l's epoch (it would otherwise stand in a migration
// target's way until it expired).
func (ls *Leases) Release(ctx context.Context, l *Lease) error {
	err := ls.kv.Delete(ctx, l.Job, jetstream.LastRevision(l.rev))
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		if v, rev, rerr := ls.read(ctx, l.Job); rerr == nil && rev == 0 {
			err = nil
		} else if rerr == nil && v.Node == l.Node && v.Epoch == l.Epoch && rev != l.rev {
			err = ls.kv.Delete(ctx, l.Job, jetstream.LastRevision(rev))
		}
	}
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("release the lease of job %s: %w", l.Job, err)
	}
	return nil
}

// Adopt takes over a lease this node holds at epoch already — one a
// previous daemon of the node took and renewed, found by a daemon that
// restarted while the job ran on — by renewing it from its current
// revision: from then on this Leases renews it and the caller's fencer
// counts its deadline. ErrLeaseHeld when the lease names another node or
// epoch, ErrLeaseLost when there is none (Acquire it instead).
func (ls *Leases) Adopt(ctx context.Context, job string, epoch uint64) (*Lease, error) {
	v, rev, err := ls.read(ctx, job)
	switch {
	case errors.Is(err, errUnreadableLease):
		return nil, fmt.Errorf("job %s: %w", job, ErrLeaseHeld)
	case err != nil:
		return nil, err
	case rev == 0:
		return nil, fmt.Errorf("job %s: %w", job, ErrLeaseLost)
	case v.Node != ls.node || v.Epoch != epoch:
		return nil, fmt.Errorf("job %s: %w", job, ErrLeaseHeld)
	}
	l := &Lease{Job: job, Node: ls.node, Epoch: epoch, rev: rev, period: ls.period}
	if err := ls.Renew(ctx, l); err != nil {
		return nil, err
	}
	return l, nil
}

// Holder says who holds the job's lease now ("" when nobody does).
func (ls *Leases) Holder(ctx context.Context, job string) (node string, epoch uint64, err error) {
	v, _, err := ls.read(ctx, job)
	return v.Node, v.Epoch, err
}

// read returns the job's lease and its revision, 0 (and a zero value)
// when nobody holds it. A value that does not decode is errUnreadableLease.
func (ls *Leases) read(ctx context.Context, job string) (leaseValue, uint64, error) {
	e, err := ls.kv.Get(ctx, job)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return leaseValue{}, 0, nil
	}
	if err != nil {
		return leaseValue{}, 0, fmt.Errorf("read the lease of job %s: %w", job, err)
	}
	var v leaseValue
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		return leaseValue{}, 0, fmt.Errorf("lease of job %s is %w: %v", job, errUnreadableLease, err)
	}
	return v, e.Revision(), nil
}

var errUnreadableLease = errors.New("unreadable")
