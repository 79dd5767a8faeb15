package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Lazy (post-copy) migration, rule 8 of docs/cluster.md. It is the
// stop-and-copy protocol of migrate.go with the job's memory left out of
// the archive: the source's CRIU keeps it and serves it through a tunnel
// (tunnel.go) to the target's lazy-pages daemon, which pulls what the
// resumed job touches, and the rest in the background. So the job runs on
// the target while the source still holds the only complete copy of its
// memory, and the protocol adds one step after the resume:
//
//  7. the source asks the target (migrate-memory) whether every page
//     arrived. Yes: it kills its stopped copy, as in stop-and-copy. No:
//     the target has killed its own copy the moment its memory stopped
//     arriving (a page it never got would read as zeros), and hands the
//     job back to the source by compare-and-set (owner the source, next
//     epoch); the source resumes its stopped copy only once the record
//     names it again. The job then runs from the moment of the
//     checkpoint: the target's work since the resume is lost, never done
//     twice at the same time.
//
// A target that dies before all pages arrived never hands anything back:
// the record names it, so the source kills its copy after pendingTimeout
// and the job is lost except from its last complete checkpoint (failover).
// Lazy migration is for planned moves between healthy nodes.

// migrateMemory asks a target whether a lazily migrated job's memory has
// all arrived (the reply waits until it has, or has failed).
type migrateMemory struct {
	ID string `json:"id"`
}

// followLazy remembers where a lazily imported job's memory comes from,
// and closes its proxy once the memory has all arrived (or failed).
func (c *clusterNode) followLazy(in migrateIn, proxy *pageServerProxy) {
	c.mu.Lock()
	if c.lazySources == nil {
		c.lazySources = map[string]string{}
	}
	c.lazySources[in.ID] = in.From
	c.mu.Unlock()
	go func() {
		_ = c.m.LazyWait(context.Background(), in.ID)
		_ = proxy.Close()
	}()
}

// lazyFailed runs when the memory of lazily imported job id stopped
// arriving; the job manager has killed its tree already.
func (c *clusterNode) lazyFailed(id string, err error) {
	c.mu.Lock()
	if c.importing[id] {
		// Still in migrate-in: look again once it is pending.
		c.mu.Unlock()
		time.AfterFunc(100*time.Millisecond, func() { c.lazyFailed(id, err) })
		return
	}
	if p := c.pending[id]; p != nil {
		// Not resumed: resume, abort or settle decides (see there).
		p.lazyErr = err
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if herr := c.handBack(ctx, id); herr != nil {
		c.log.Error("hand a lazily migrated job back to its source", "job", id, "err", herr, "cause", err)
	}
}

// handBack gives job id back to the node it lazily migrated from, after
// its copy here was killed, and forgets it here.
func (c *clusterNode) handBack(ctx context.Context, id string) error {
	c.mu.Lock()
	from := c.lazySources[id]
	c.mu.Unlock()
	me := c.node.Name()
	rec, err := c.records.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("read the job's record: %w", err)
	}
	if rec.Owner == me && from != "" {
		moved, handed, herr := c.handOver(ctx, rec, from)
		if !handed {
			return fmt.Errorf("give job %s back to node %s: %w", id, from, herr)
		}
		c.fo.fencer.Drop(context.WithoutCancel(ctx), id)
		c.log.Info("lazily migrated job handed back to its source", "job", id, "to", from, "epoch", moved.Epoch)
	}
	if derr := c.m.Discard(ctx, id); derr != nil {
		c.log.Warn("forget a lazily migrated job handed back", "job", id, "err", derr)
	}
	return nil
}

// handleMigrateMemory is the target's step 7: it answers once the job's
// memory has all arrived, or with why it did not.
func (c *clusterNode) handleMigrateMemory(ctx context.Context, raw json.RawMessage) (any, error) {
	var r migrateMemory
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, status.Error(codes.InvalidArgument, "unreadable request: "+err.Error())
	}
	if err := c.m.LazyWait(ctx, r.ID); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// settleLazySource is the source's step 7, once its CRIU stopped serving
// (served: CRIU's error, if any). It reports whether the memory all
// arrived, and whether the job came back to this node.
func (c *clusterNode) settleLazySource(ctx context.Context, id, to string, epoch uint64, served error) (complete, back bool) {
	ctx = context.WithoutCancel(ctx)
	cctx, cancel := context.WithTimeout(ctx, pendingTimeout)
	err := c.callWatching(cctx, to, "migrate-memory", migrateMemory{ID: id}, nil)
	cancel()
	if err == nil {
		return true, false
	}
	c.log.Warn("lazy migration: the job's memory did not all reach the target", "job", id, "to", to, "err", err, "page_server", served)
	me := c.node.Name()
	for deadline := time.Now().Add(pendingTimeout); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		gctx, gcancel := context.WithTimeout(ctx, 2*time.Second)
		rec, gerr := c.records.Get(gctx, id)
		gcancel()
		if gerr == nil && rec.Owner == me && rec.Epoch > epoch {
			// Resumed here only under a lease this node renews (see
			// holdLease); the target's, released when it handed the job
			// back, expires within a lease period if that failed.
			lctx, lcancel := context.WithTimeout(ctx, 2*time.Second)
			lerr := c.holdLease(lctx, id, rec.Epoch)
			lcancel()
			if lerr == nil {
				return false, true
			}
			c.log.Warn("lazy migration: the job came back, its lease is not free yet", "job", id, "err", lerr)
		}
		if errors.Is(gerr, context.Canceled) {
			break
		}
	}
	return false, false
}
