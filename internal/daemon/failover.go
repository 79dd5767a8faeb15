package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cedana/cedana/internal/cluster"
	"github.com/cedana/cedana/internal/config"
	"github.com/cedana/cedana/internal/jobs"
	"github.com/cedana/cedana/internal/store"
)

// Failover and fencing in the daemon (docs/cluster.md, rules 1–6). The
// cluster package holds the mechanisms (leases, the Fencer, the Failover
// controller, the watchdog); this file connects them to the job manager:
//
//   - sync, every fencer round, makes the cluster's records and leases
//     follow the local jobs: a job that runs here has a record owned by
//     this node and a lease the Fencer renews; a job that stopped has its
//     lease released and its record marked stopped; a complete checkpoint
//     in shared storage is committed as the job's latest under the
//     node's epoch; a copy whose record another node owns is ended.
//   - gate answers the job manager before a job runs again here without a
//     user asking (daemon restart, restore on failure).
//   - restore is the Failover controller's way to run a lost node's job
//     here.
//   - the watchdog receives every held job's deadline, to stop the jobs
//     if this daemon dies or freezes.
type failover struct {
	c       *clusterNode
	leases  *cluster.Leases
	fencer  *cluster.Fencer
	ctl     *cluster.Failover
	wd      *cluster.Watchdog
	enabled bool // policy.failover is not off
	shared  bool // checkpoints go to storage other nodes read
	tick    time.Duration
	poke    chan struct{}
	rounds  int               // sync rounds so far
	seen    map[string]string // job → its local state when last settled
}

// gateTimeout bounds one question to the cluster from the gate.
const gateTimeout = 3 * time.Second

// newFailover prepares leases and fencing; run starts them.
func newFailover(ctx context.Context, c *clusterNode, cfg config.Config, shared bool) (*failover, error) {
	ls, err := c.node.Leases(ctx, 0)
	if err != nil {
		return nil, fmt.Errorf("the cluster's leases: %w", err)
	}
	f := &failover{c: c, leases: ls, enabled: cfg.Policy.Failover != "off", shared: shared, poke: make(chan struct{}, 1), seen: map[string]string{}}
	f.fencer = cluster.NewFencer(ls, c.records, jobFence{m: c.m}, c.log)
	f.ctl = cluster.NewFailover(c.node, c.records, ls, f.restore, c.log)
	f.tick = max(f.fencer.Period()/8, 250*time.Millisecond)
	return f, nil
}

// startWatchdog starts the fence watchdog of this state directory.
func (f *failover) startWatchdog(stateDir string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(stateDir, "fence-watchdog.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	f.wd, err = cluster.StartWatchdog(exe, stateDir, logf)
	logf.Close() // the child has its own descriptor
	return err
}

// run drives fencing, failover and the sync loop until ctx ends.
func (f *failover) run(ctx context.Context) {
	go f.fencer.Run(ctx, nil)
	events := make(chan cluster.Takeover, 16)
	go f.ctl.Run(ctx, events)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case t := <-events:
				f.report(t)
			}
		}
	}()
	t := time.NewTicker(f.tick)
	defer t.Stop()
	for {
		f.sync(ctx)
		select {
		case <-ctx.Done():
			if f.wd != nil {
				f.wd.Close()
			}
			return
		case <-t.C:
		case <-f.poke:
		}
	}
}

// nudge makes the sync loop run soon (a job started, stopped or was
// checkpointed).
func (f *failover) nudge() {
	select {
	case f.poke <- struct{}{}:
	default:
	}
}

// canFailOver says whether j would be restored elsewhere if this node
// were lost.
func (f *failover) canFailOver(j *store.Job) bool {
	return f.enabled && f.shared && j.Policy.RestoreOnFailure && j.Runtime == ""
}

// spec is what another node needs to run j.
func spec(j *store.Job) json.RawMessage {
	b, _ := json.Marshal(jobs.ImportSpec{ID: j.ID, Name: j.Name, Cmd: j.Cmd, Dir: j.Dir, LogPath: j.LogPath, Policy: j.Policy})
	return b
}

// live reports whether a job in this state needs its lease: it runs, or
// is about to run again here.
func live(j *store.Job) bool {
	switch jobs.State(j.State) {
	case jobs.Starting, jobs.Running, jobs.Dumping, jobs.Restoring:
		return true
	case jobs.Failed:
		return j.RestorePending
	}
	return false
}

// fullSyncEvery is how many fencer rounds pass between two passes over
// every local job's record; in between only jobs whose local state
// changed are looked at (a round costs no NATS call otherwise).
const fullSyncEvery = 8

// sync makes the cluster's records and leases follow the local jobs.
func (f *failover) sync(ctx context.Context) {
	c := f.c
	local, err := c.m.List(ctx)
	if err != nil {
		return
	}
	f.rounds++
	full := f.rounds%fullSyncEvery == 1
	held := map[string]bool{}
	for _, id := range f.fencer.Holding() {
		held[id] = true
	}
	here := map[string]bool{}
	me := c.node.Name()
	for _, j := range local {
		here[j.ID] = true
		if c.isPending(j.ID) || jobs.State(j.State) == jobs.Moved {
			continue // a migration's stopped copy, or history only
		}
		fp := fmt.Sprintf("%s|%d|%s|%t|%t|%t", j.State, j.PID, j.LastCheckpointID, j.RestorePending, held[j.ID], j.Policy.RestoreOnFailure)
		if !full && f.seen[j.ID] == fp {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, f.tick*2)
		settled := f.syncJob(rctx, j, me, held[j.ID])
		cancel()
		if settled {
			f.seen[j.ID] = fp
		} else {
			delete(f.seen, j.ID)
		}
	}
	for id := range held {
		if !here[id] { // removed, or migrated away
			f.fencer.Drop(ctx, id)
		}
	}
	for id := range f.seen {
		if !here[id] {
			delete(f.seen, id)
		}
	}
	f.feedWatchdog(local)
}

// syncJob settles one job's record and lease; it reports false when it
// must be looked at again next round (NATS unreachable, lease not yet
// free).
func (f *failover) syncJob(ctx context.Context, j *store.Job, me string, held bool) bool {
	c := f.c
	rec, err := c.records.Get(ctx, j.ID)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		if !live(j) {
			return true
		}
		// The lease first (epoch 1, the record's first): a record that
		// names this node owner of a running job while no lease exists is
		// what a survivor claims once this node looks down (rule 4), and
		// a node cut off between the two writes would run the job
		// unfenced.
		if !held {
			if err := c.takeLease(ctx, j.ID, 1); err != nil {
				return false
			}
			held = true
		}
		rec, err = c.records.Create(ctx, cluster.JobRecord{ID: j.ID, Name: j.Name, Spec: spec(j), Failover: f.canFailOver(j)})
		if err != nil {
			return false
		}
	case err != nil:
		return false // unreachable: the Fencer's deadlines protect what runs
	}
	if rec.Owner != me {
		// Another node runs the job (rule 5). A held lease is the
		// Fencer's to settle; a copy in a dump is a migration's source,
		// which ends its copy itself; a restore in progress settles first
		// (a restore of this node's own ends in the gate).
		if live(j) && !held && jobs.State(j.State) != jobs.Dumping && jobs.State(j.State) != jobs.Restoring {
			owner := rec.Owner
			if owner == "" {
				owner = "no node (the cluster gave it up)"
			}
			_ = c.m.Fence(context.WithoutCancel(ctx), j.ID,
				fmt.Sprintf("the cluster's record gives the job to %s at epoch %d", owner, rec.Epoch))
		}
		return !live(j) || (jobs.State(j.State) != jobs.Dumping && jobs.State(j.State) != jobs.Restoring)
	}
	settled := true
	want := rec
	if live(j) {
		if !held {
			// Taken, or adopted from this node's previous daemon. Else
			// (ErrLeaseHeld) the previous epoch's holder (a migration's
			// source) releases it or it expires within a lease period.
			if err := c.takeLease(ctx, j.ID, rec.Epoch); err != nil {
				settled = false
			}
		}
		want.State, want.Reason, want.Attempts = cluster.JobRunning, "", 0
		want.Failover, want.Spec = f.canFailOver(j), spec(j)
		if key, at, ok := f.latest(ctx, j); ok && at.After(rec.LatestAt) {
			if rec.Latest != "" && rec.Latest != key {
				want.Previous, want.PreviousAt = rec.Latest, rec.LatestAt
			}
			want.Latest, want.LatestAt = key, at.UTC()
		}
	} else {
		if held {
			f.fencer.Drop(ctx, j.ID)
		}
		want.State = cluster.JobStopped
	}
	if want.State == rec.State && want.Latest == rec.Latest && want.Failover == rec.Failover &&
		want.Attempts == rec.Attempts && string(want.Spec) == string(rec.Spec) {
		return settled
	}
	if _, err := c.records.Update(ctx, want); err != nil {
		c.log.Debug("update the job's cluster record", "job", j.ID, "err", err)
		return false
	}
	return settled
}

// latest is the job's newest complete checkpoint in shared storage.
func (f *failover) latest(ctx context.Context, j *store.Job) (string, time.Time, bool) {
	if !f.shared {
		return "", time.Time{}, false
	}
	cks, err := f.c.m.Checkpoints(ctx, j.ID)
	if err != nil {
		return "", time.Time{}, false
	}
	var best *store.Checkpoint
	for _, ck := range cks {
		if ck.State == store.CheckpointComplete && f.c.m.Shared(ck.Path) && (best == nil || ck.CompletedAt.After(best.CompletedAt)) {
			best = ck
		}
	}
	if best == nil {
		return "", time.Time{}, false
	}
	return best.Path, best.CompletedAt, true
}

// feedWatchdog tells the watchdog every held job's deadline, a tenth of a
// lease period after the Fencer's own: the watchdog acts only when the
// daemon did not. A job with a cgroup is named by it (the watchdog reads
// its processes when it acts); one without, by its processes now.
func (f *failover) feedWatchdog(local []*store.Job) {
	if f.wd == nil {
		return
	}
	byID := make(map[string]*store.Job, len(local))
	for _, j := range local {
		byID[j.ID] = j
	}
	now := time.Now()
	var out []cluster.WatchJob
	for id, d := range f.fencer.Deadlines() {
		j := byID[id]
		if j == nil {
			continue
		}
		w := cluster.WatchJob{Job: id, Cgroup: f.c.m.CgroupDir(j), LeftMS: d.Add(f.fencer.Period() / 10).Sub(now).Milliseconds()}
		if w.Cgroup == "" {
			w.PIDs = f.c.m.Tasks(j)
		} else if j.PID > 0 {
			w.PIDs = []int{j.PID}
		}
		out = append(out, w)
	}
	if err := f.wd.Update(out); err != nil {
		f.c.log.Warn("the fence watchdog does not take updates", "err", err)
	}
}

// gate is the job manager's question before a job runs again here.
func (f *failover) gate(ctx context.Context, j *store.Job) error {
	ctx, cancel := context.WithTimeout(ctx, gateTimeout)
	defer cancel()
	me := f.c.node.Name()
	rec, err := f.c.records.Get(ctx, j.ID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil // never recorded: nobody else can have it
	}
	if err != nil {
		return fmt.Errorf("read the job's record in the cluster: %w", err)
	}
	if rec.Owner != me {
		owner := rec.Owner
		if owner == "" {
			owner = "no node (the cluster gave it up)"
		}
		return fmt.Errorf("%w: the cluster's record gives job %s to %s (epoch %d)", jobs.ErrOwnedElsewhere, j.Name, owner, rec.Epoch)
	}
	holder, epoch, err := f.leases.Holder(ctx, j.ID)
	if err != nil {
		return err
	}
	if holder != "" && holder != me {
		return fmt.Errorf("%w: node %s holds the job's lease (epoch %d): it is taking the job over", jobs.ErrOwnedElsewhere, holder, epoch)
	}
	// Not held by this daemon's fencer (the lease expired in an outage of
	// the store while the job was down, or this node's previous daemon
	// held it): take or adopt it before the job runs again, as a
	// migration's target does (holdLease), so that the copy is never
	// unfenced.
	if err := f.c.holdLease(ctx, j.ID, rec.Epoch); err != nil {
		return fmt.Errorf("take the job's lease before it runs again here: %w", err)
	}
	return nil
}

// restore runs a lost node's job here (the Failover controller claimed it
// under l).
func (f *failover) restore(ctx context.Context, rec cluster.JobRecord, from string, l *cluster.Lease) error {
	var s jobs.ImportSpec
	if err := json.Unmarshal(rec.Spec, &s); err != nil || s.ID != rec.ID {
		return fmt.Errorf("job %s: the cluster's record carries no usable job definition", rec.ID)
	}
	// Renewed from now on: a restore may take longer than a lease period.
	f.fencer.Hold(l)
	// The latest checkpoint first; if it cannot be restored (a file it
	// needs is gone, a damaged object), the one before it.
	type checkpoint struct {
		key string
		at  time.Time
	}
	tries := []checkpoint{{rec.Latest, rec.LatestAt}}
	if rec.Previous != "" {
		tries = append(tries, checkpoint{rec.Previous, rec.PreviousAt})
	}
	var err error
	for i, ck := range tries {
		lost := time.Since(ck.at).Round(time.Millisecond)
		note := fmt.Sprintf("failed over from node %s (lost) to node %s at epoch %d: restored checkpoint %s taken %s; work lost: up to %v (the time since that checkpoint)",
			from, f.c.node.Name(), rec.Epoch, ck.key, ck.at.Format(time.RFC3339), lost)
		if i > 0 {
			note += fmt.Sprintf("; the latest checkpoint %s could not be restored: %v", rec.Latest, err)
		}
		_, err = f.c.m.TakeOver(context.WithoutCancel(ctx), jobs.TakeOverSpec{ImportSpec: s, Archive: ck.key, CheckpointAt: ck.at, Note: note})
		if err == nil {
			break
		}
	}
	if err != nil {
		f.fencer.Drop(context.WithoutCancel(ctx), rec.ID)
		return err
	}
	f.nudge()
	return nil
}

// report logs what the Failover controller did.
func (f *failover) report(t cluster.Takeover) {
	switch {
	case t.Lost:
		f.c.log.Warn("job lost with its node", "job", t.Job, "name", t.Name, "node", t.From, "reason", t.Reason)
	case t.Err != nil:
		f.c.log.Warn("failover restore failed; another attempt follows", "job", t.Job, "name", t.Name, "from", t.From, "err", t.Err)
	default:
		f.c.log.Info("job failed over", "job", t.Job, "name", t.Name, "from", t.From, "to", t.To,
			"checkpoint", t.Checkpoint, "lost_work", t.LostWork.Round(time.Millisecond))
	}
}

// jobFence is the Fencer's hand on local copies.
type jobFence struct{ m *jobs.Manager }

func (f jobFence) Freeze(job string) error { return f.m.Freeze(job) }
func (f jobFence) Thaw(job string) error   { return f.m.Thaw(job) }
func (f jobFence) Kill(job string) error {
	return f.m.Fence(context.Background(), job, "another node owns the job now: this node lost its lease and the cluster's record has a newer epoch")
}

// holdLease takes job id's lease at epoch and has the fencer renew it,
// unless this node holds it already. An imported copy resumes only under a
// lease this node renews: the hand-over moves the record, not the lease
// (the source releases its own), and a target cut off right after it
// resumed its copy, before it took the lease, would run it unfenced while
// a survivor, seeing the target down and no lease, claims the job (rule
// 4) — two copies. With the lease taken first, a cut-off target freezes
// its copy at the lease's deadline (rule 3), before the lease expires and
// a survivor may claim. ErrLeaseHeld: another node holds it (a survivor
// claimed the job), or the source's lease was not released and has not
// expired yet.
//
// A store that does not answer (a NATS server of the cluster just died and
// its streams elect a new leader, seconds) is asked again for up to
// leaseRetry, and so is a lease still held: the source released its own
// just before, and a replica may not have seen that yet.
func (c *clusterNode) holdLease(ctx context.Context, id string, epoch uint64) error {
	deadline := time.Now().Add(leaseRetry)
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := c.takeLease(actx, id, epoch)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// takeLease is one try of holdLease: the fencer holds job id's lease at
// epoch when it returns nil — taken, or adopted when this node holds it
// already but the fencer does not (a previous daemon of the node took it,
// and the job ran on while the daemon restarted).
func (c *clusterNode) takeLease(ctx context.Context, id string, epoch uint64) error {
	if slices.Contains(c.fo.fencer.Holding(), id) {
		return nil
	}
	l, err := c.fo.leases.Acquire(ctx, id, epoch)
	if errors.Is(err, cluster.ErrLeaseHeld) {
		l, err = c.fo.leases.Adopt(ctx, id, epoch)
		if errors.Is(err, cluster.ErrLeaseLost) { // released meanwhile
			l, err = c.fo.leases.Acquire(ctx, id, epoch)
		}
	}
	if err != nil {
		return err
	}
	c.fo.fencer.Hold(l)
	return nil
}

// leaseRetry is how long holdLease keeps asking for a lease.
const leaseRetry = 8 * time.Second
