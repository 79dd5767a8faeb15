package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// JobsBucket holds the cluster's record of every job: who owns it, under
// which epoch, and its latest complete checkpoint.
const JobsBucket = "cedana_jobs"

// ErrStaleEpoch means a write was decided under an epoch that is no longer
// the job's: another node claimed the job since. The writer must stop its
// copy (docs/cluster.md, rules 5 and 6).
var ErrStaleEpoch = errors.New("stale epoch: the job now belongs to another owner")

// ErrJobExists means a job with that ID is already recorded.
var ErrJobExists = errors.New("job already recorded")

// JobRecord is the cluster's truth about one job. Epoch is the ownership
// epoch: 1 when the job is recorded, one more at each claim and hand-over,
// never changed by anything else (committing a checkpoint keeps it). Every
// write is a compare-and-set on Rev, the KV revision of the entry, so two
// writers deciding from the same read cannot both win.
type JobRecord struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Owner string `json:"owner"`
	// Latest is the storage key of the newest complete checkpoint.
	Latest string `json:"latest,omitempty"`
	// LatestAt is when that checkpoint was committed.
	LatestAt time.Time `json:"latest_at,omitempty"`
	// Previous is the checkpoint Latest replaced: a failover tries it
	// when the latest cannot be restored.
	Previous   string    `json:"previous,omitempty"`
	PreviousAt time.Time `json:"previous_at,omitempty"`
	// Failover: restore on another node when the owner is lost.
	Failover bool `json:"failover,omitempty"`
	// Spec is the job's definition, opaque to this package.
	Spec json.RawMessage `json:"spec,omitempty"`
	// State is JobRunning while the job runs (or is being restored) on its
	// owner, JobStopped when it does not run anywhere on purpose (killed,
	// exited, checkpointed), JobLost when its owner is gone and it could
	// not fail over; Reason says why, Attempts counts failed failover
	// restores of the current loss.
	State    string `json:"state,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Attempts int    `json:"attempts,omitempty"`
	Epoch    uint64 `json:"epoch"`

	Rev uint64 `json:"-"`
}

// Job record states.
const (
	JobRunning = "running"
	JobStopped = "stopped"
	JobLost    = "lost"
)

// Jobs reads and changes job records with compare-and-set.
type Jobs struct {
	node string
	kv   jetstream.KeyValue
}

// Jobs returns the node's view of the job records.
func (n *Node) Jobs(ctx context.Context) (*Jobs, error) {
	kv, err := n.bucket(ctx, jetstream.KeyValueConfig{
		Bucket:      JobsBucket,
		Description: "cedana job records (docs/cluster.md)",
		History:     8,
	})
	if err != nil {
		return nil, err
	}
	return &Jobs{node: n.opts.Node, kv: kv}, nil
}

// Create records a new job owned by this node; its first epoch is returned
// in the record.
func (js *Jobs) Create(ctx context.Context, r JobRecord) (JobRecord, error) {
	r.Owner, r.Epoch = js.node, 1
	if r.State == "" {
		r.State = JobRunning
	}
	b, err := json.Marshal(r)
	if err != nil {
		return r, err
	}
	rev, err := js.kv.Create(ctx, r.ID, b)
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return r, fmt.Errorf("job %s: %w", r.ID, ErrJobExists)
	}
	if err != nil {
		return r, fmt.Errorf("record job %s: %w", r.ID, err)
	}
	r.Rev = rev
	return r, nil
}

// Get reads a job's record and its current epoch.
func (js *Jobs) Get(ctx context.Context, id string) (JobRecord, error) {
	e, err := js.kv.Get(ctx, id)
	if err != nil {
		return JobRecord{}, fmt.Errorf("job %s: %w", id, err)
	}
	var r JobRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return JobRecord{}, fmt.Errorf("job %s: unreadable record: %w", id, err)
	}
	r.Rev = e.Revision()
	return r, nil
}

// update writes r if the record is still at revision r.Rev, and returns it
// with its new revision; ErrStaleEpoch otherwise.
func (js *Jobs) update(ctx context.Context, r JobRecord) (JobRecord, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return r, err
	}
	rev, err := js.kv.Update(ctx, r.ID, b, r.Rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) ||
		errors.Is(err, jetstream.ErrKeyNotFound) {
		return r, fmt.Errorf("job %s at epoch %d: %w", r.ID, r.Epoch, ErrStaleEpoch)
	}
	if err != nil {
		return r, fmt.Errorf("update job %s: %w", r.ID, err)
	}
	r.Rev = rev
	return r, nil
}

// CommitCheckpoint makes key the job's latest complete checkpoint, under
// the epoch the caller owns the job by. A node that lost the job (its
// epoch is stale) cannot make its upload the latest: rule 6.
func (js *Jobs) CommitCheckpoint(ctx context.Context, r JobRecord, key string, at time.Time) (JobRecord, error) {
	if r.Owner != js.node {
		return r, fmt.Errorf("job %s is owned by %s, not %s: %w", r.ID, r.Owner, js.node, ErrStaleEpoch)
	}
	if r.Latest != "" && r.Latest != key {
		r.Previous, r.PreviousAt = r.Latest, r.LatestAt
	}
	r.Latest, r.LatestAt = key, at.UTC()
	return js.update(ctx, r)
}

// Claim makes this node the owner of a job whose previous owner is lost:
// it takes the job's lease (which exists nowhere only once the old owner's
// has expired) and then moves the record to this node with a CAS from the
// epoch the caller read. Of any number of nodes claiming at once exactly
// one succeeds; the others get ErrLeaseHeld or ErrStaleEpoch. The lease
// returned carries the new epoch.
func (js *Jobs) Claim(ctx context.Context, ls *Leases, seen JobRecord) (JobRecord, *Lease, error) {
	l, err := ls.Acquire(ctx, seen.ID, seen.Epoch+1)
	if err != nil {
		return seen, nil, err
	}
	r := seen
	r.Owner, r.State, r.Reason = js.node, JobRunning, ""
	r.Epoch++
	r, err = js.update(ctx, r)
	if err != nil {
		// Someone changed the record since it was read: stand down.
		_ = ls.Release(ctx, l)
		return seen, nil, err
	}
	l.Epoch = r.Epoch
	if err := ls.Renew(ctx, l); err != nil { // the lease now names the new epoch
		return r, nil, err
	}
	return r, l, nil
}

// Hand moves a job this node owns to another node (a migration's commit
// point, rule 7): after it, the target owns the job and this node must not
// resume its frozen copy.
func (js *Jobs) Hand(ctx context.Context, r JobRecord, to string) (JobRecord, error) {
	if r.Owner != js.node {
		return r, fmt.Errorf("job %s is owned by %s, not %s: %w", r.ID, r.Owner, js.node, ErrStaleEpoch)
	}
	r.Owner = to
	r.Epoch++
	return js.update(ctx, r)
}

// List reads every job record, in no particular order.
func (js *Jobs) List(ctx context.Context) ([]JobRecord, error) {
	keys, err := js.kv.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list job records: %w", err)
	}
	out := make([]JobRecord, 0, len(keys))
	for _, k := range keys {
		r, err := js.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Delete removes a job's record under the epoch the caller owns it by
// (the job was removed for good).
func (js *Jobs) Delete(ctx context.Context, r JobRecord) error {
	err := js.kv.Delete(ctx, r.ID, jetstream.LastRevision(r.Rev))
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("job %s at epoch %d: %w", r.ID, r.Epoch, ErrStaleEpoch)
	}
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete the record of job %s: %w", r.ID, err)
	}
	return nil
}

// Update writes r, changed from a record read with Get or List, if nobody
// changed the record since (ErrStaleEpoch otherwise). Ownership moves
// only with Claim and Hand; Update keeps r's owner and epoch.
func (js *Jobs) Update(ctx context.Context, r JobRecord) (JobRecord, error) {
	return js.update(ctx, r)
}
