package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// maxFailoverAttempts bounds how many restores the cluster tries for one
// loss before it calls the job lost.
const maxFailoverAttempts = 3

// RestoreFunc restores a job this node has just claimed, from r.Latest,
// under lease l (whose epoch is the record's). The job layer implements
// it: it restores the checkpoint, records the job as its own and hands l
// to its Fencer. An error means the job does not run here; the failover
// controller then gives the job up for another attempt.
type RestoreFunc func(ctx context.Context, r JobRecord, from string, l *Lease) error

// Takeover reports what the failover controller did about one job whose
// owner was lost.
type Takeover struct {
	Job  string
	Name string
	From string // the lost owner
	To   string // this node ("" when the job was marked lost)
	// Checkpoint is the storage key restored from, taken at CheckpointAt.
	Checkpoint   string
	CheckpointAt time.Time
	// LostWork is the work since that checkpoint: at most one interval of
	// periodic checkpoints, plus the detection time.
	LostWork time.Duration
	// Lost: the job was marked lost (Reason says why), not restored.
	Lost   bool
	Reason string
	// Err: this node claimed the job but could not restore it; the job is
	// given up for another attempt.
	Err error
}

// Failover takes over the jobs of lost nodes (docs/cluster.md,
// "Failover"). Every ready node runs one. A job is taken over only when
// its owner is not ready by the membership AND its lease has expired:
// the lease, not the membership, is what keeps two copies from running
// (the owner freezes its copy before the lease can expire). Of the nodes
// that see an orphan, the best placed (fewest jobs, most free memory)
// tries at once and the others one tick later per rank, so jobs spread
// and claims rarely collide; when they do, Claim lets exactly one win.
type Failover struct {
	node    *Node
	jobs    *Jobs
	leases  *Leases
	restore RestoreFunc
	tick    time.Duration
	log     *slog.Logger

	orphanSince map[string]time.Time // job → when this node first saw it orphaned
}

// NewFailover returns the failover controller of n; Run drives it. A nil
// logger discards.
func NewFailover(n *Node, js *Jobs, ls *Leases, restore RestoreFunc, log *slog.Logger) *Failover {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Failover{node: n, jobs: js, leases: ls, restore: restore,
		tick: min(n.opts.NodeTimeout/10, time.Second), log: log, orphanSince: map[string]time.Time{}}
}

// Run scans the job records every tenth of the node timeout (at most every
// second) until ctx
// ends; events receives every takeover (it may be nil).
func (f *Failover) Run(ctx context.Context, events chan<- Takeover) {
	t := time.NewTicker(f.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		done, err := f.Scan(ctx)
		if err != nil && ctx.Err() == nil {
			f.log.Warn("failover scan", "err", err)
		}
		for _, d := range done {
			if events != nil {
				select {
				case events <- d:
				case <-ctx.Done():
					return
				}
			}
		}
	}
}

// Scan makes one pass over the job records and takes over what it may.
func (f *Failover) Scan(ctx context.Context) ([]Takeover, error) {
	nodes, err := f.node.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	rank, ok := rankOf(nodes, f.node.Name())
	if !ok {
		return nil, nil // this node is not ready (draining, or not seen yet)
	}
	alive := map[string]bool{}
	for _, n := range nodes {
		if n.State != StateDown {
			alive[n.Name] = true
		}
	}
	records, err := f.jobs.List(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	seen := map[string]bool{}
	var out []Takeover
	for _, r := range records {
		if r.State != JobRunning || r.Owner == f.node.Name() || (r.Owner != "" && alive[r.Owner]) {
			continue
		}
		holder, _, err := f.leases.Holder(ctx, r.ID)
		if err != nil {
			return out, err
		}
		if holder != "" {
			continue // the owner may still run it: wait for the lease to expire
		}
		seen[r.ID] = true
		since, ok := f.orphanSince[r.ID]
		if !ok {
			since = now
			f.orphanSince[r.ID] = now
		}
		if now.Sub(since) < time.Duration(rank)*f.tick {
			continue // a better-placed node goes first
		}
		if t, ok := f.takeOver(ctx, r); ok {
			out = append(out, t)
		}
	}
	for id := range f.orphanSince {
		if !seen[id] {
			delete(f.orphanSince, id)
		}
	}
	return out, nil
}

// takeOver claims and restores one orphaned job, or marks it lost. It
// reports false when another node was faster.
func (f *Failover) takeOver(ctx context.Context, r JobRecord) (Takeover, bool) {
	t := Takeover{Job: r.ID, Name: r.Name, From: r.Owner, Checkpoint: r.Latest, CheckpointAt: r.LatestAt}
	if why := cannotFailOver(r); why != "" {
		lost := r
		lost.State, lost.Reason = JobLost, why
		if _, err := f.jobs.update(ctx, lost); err != nil {
			return t, false // changed meanwhile: someone else decided
		}
		t.Lost, t.Reason = true, why
		f.log.Warn("job lost with its node", "job", r.ID, "node", r.Owner, "reason", why)
		return t, true
	}
	claimed, l, err := f.jobs.Claim(ctx, f.leases, r)
	if err != nil {
		if !errors.Is(err, ErrLeaseHeld) && !errors.Is(err, ErrStaleEpoch) {
			f.log.Warn("failover claim", "job", r.ID, "err", err)
		}
		return t, false
	}
	t.To = f.node.Name()
	t.LostWork = time.Since(r.LatestAt)
	f.log.Info("failing over", "job", r.ID, "from", r.Owner, "checkpoint", r.Latest, "lost_work", t.LostWork)
	if err := f.restore(ctx, claimed, r.Owner, l); err != nil {
		t.Err = err
		f.giveUp(ctx, claimed, l, err)
		return t, true
	}
	return t, true
}

// cannotFailOver says why a job whose owner is lost cannot run elsewhere,
// or "".
func cannotFailOver(r JobRecord) string {
	switch {
	case !r.Failover:
		return fmt.Sprintf("node %s was lost and the job has no restore-on-failure", r.Owner)
	case r.Latest == "":
		return fmt.Sprintf("node %s was lost before the job's first complete checkpoint", r.Owner)
	case r.Attempts >= maxFailoverAttempts:
		return fmt.Sprintf("%d restores of checkpoint %s failed: %s", r.Attempts, r.Latest, r.Reason)
	}
	return ""
}

// giveUp leaves a job that this node claimed but could not restore to
// another attempt: the record loses its owner (so every node sees it
// orphaned) and counts the attempt, then the lease goes.
func (f *Failover) giveUp(ctx context.Context, r JobRecord, l *Lease, cause error) {
	for range 5 {
		cur, err := f.jobs.Get(ctx, r.ID)
		if err != nil || cur.Owner != f.node.Name() || cur.Epoch != r.Epoch {
			break // gone, or decided elsewhere meanwhile
		}
		cur.Owner, cur.Reason = "", cause.Error()
		cur.Epoch++ // whatever this node started of the job is not the job any more
		cur.Attempts++
		if _, err = f.jobs.update(ctx, cur); err == nil {
			r = cur
			break
		}
		if !errors.Is(err, ErrStaleEpoch) {
			f.log.Warn("failover: give the job up", "job", r.ID, "err", err)
		}
	}
	_ = f.leases.Release(ctx, l)
	f.log.Warn("failover restore failed", "job", r.ID, "attempt", r.Attempts, "err", cause)
}
