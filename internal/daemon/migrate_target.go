package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cedana/cedana/internal/cluster"
	"github.com/cedana/cedana/internal/fault"
	"github.com/cedana/cedana/internal/jobs"
)

// The target's side of a migration (see migrate.go for the steps): it
// fetches the archive, restores the job stopped, takes the job's lease
// before it resumes its copy, and settles a copy whose source went silent.

// fetch writes the object key into dir, checking its size and SHA-256,
// and returns the file's path. A disk without room for it is refused
// before the transfer.
func (c *clusterNode) fetch(ctx context.Context, in migrateIn, dir string) (string, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err == nil {
		if free := int64(st.Bavail) * st.Bsize; free < in.Size {
			return "", fmt.Errorf("not enough space in %s for the archive: %d bytes free, %d needed", dir, free, in.Size)
		}
	}
	path := filepath.Join(dir, fmt.Sprintf("migrated-from-%s-%d.cedana", in.From, in.Epoch))
	tmp := path + ".part"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	if in.Blob != "" {
		err = c.fetchBlob(ctx, in.Blob, in.Size, f)
	} else {
		err = c.fetchObject(ctx, in, f)
	}
	// No fsync: this copy only feeds the restore that follows; the job's
	// durable checkpoints are those its policy commits (docs/cluster.md,
	// rule 6), and fsyncing here would stop the job longer.
	var sum string
	if err == nil && in.SHA256 != "" {
		sum, err = readerSHA256(io.NewSectionReader(f, 0, in.Size))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && in.SHA256 != "" && sum != in.SHA256 {
		err = fmt.Errorf("the archive arrived with SHA-256 %s, the source sent %s", sum, in.SHA256)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("receive the archive into %s: %w", dir, err)
	}
	return path, nil
}

// fetchObject copies the archive's object into f.
func (c *clusterNode) fetchObject(ctx context.Context, in migrateIn, f *os.File) error {
	obj, err := c.objects.Open(ctx, in.Key)
	if err != nil {
		return err
	}
	defer obj.Close()
	if obj.Size() != in.Size {
		return fmt.Errorf("the archive in the store has %d bytes, the source sent %d", obj.Size(), in.Size)
	}
	rc, err := obj.Stream(0, -1)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(f, rc)
	return err
}

func readerSHA256(r io.Reader) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// arrivalDir checks, on the target, that the record says node from owns
// job id at epoch (the migration is current), and returns the directory
// its archive arrives in.
func (c *clusterNode) arrivalDir(ctx context.Context, id, name, from string, epoch uint64) (string, error) {
	rec, err := c.recordAt(ctx, id, epoch)
	if err != nil {
		return "", err
	}
	if rec.Owner != from || rec.Epoch != epoch {
		return "", fmt.Errorf("job %s: the migration's epoch %d from %s is not the record's (%s at %d): %w", name, epoch, from, rec.Owner, rec.Epoch, cluster.ErrStaleEpoch)
	}
	return c.m.ArchiveDir(id)
}

// handleMigrateIn is the target's step 3.
func (c *clusterNode) handleMigrateIn(ctx context.Context, raw json.RawMessage) (any, error) {
	var in migrateIn
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, status.Error(codes.InvalidArgument, "unreadable request: "+err.Error())
	}
	if c.wasAborted(in.ID, in.Attempt) {
		return nil, errAttemptAborted
	}
	dir, err := c.arrivalDir(ctx, in.ID, in.Name, in.From, in.Epoch)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	var path string
	if in.Pushed {
		path, err = c.receivePushed(ctx, in)
	} else {
		path, err = c.fetch(ctx, in, dir)
	}
	if err != nil {
		_ = os.Remove(dir) // only if empty
		return nil, err
	}
	var proxy *pageServerProxy
	if in.Pages != "" {
		if proxy, err = listenPageServer(c.node.BulkConn(), c.node.Name(), in.Pages); err != nil {
			_ = os.Remove(path)
			_ = os.Remove(dir)
			return nil, err
		}
	}
	tFetch := time.Since(t0)
	// From now on the job exists here, not yet this node's: the sync loop
	// must leave it alone (failover.go).
	c.setImporting(in.ID, true)
	defer c.setImporting(in.ID, false)
	spec := jobs.ImportSpec{ID: in.ID, Name: in.Name, Cmd: in.Cmd, Dir: in.Dir, LogPath: in.Log, Policy: in.Policy,
		History: in.History, Runtime: in.Runtime}
	if in.Runtime != "" {
		spec.Container = jobs.MigratedContainerID(in.Container, in.From, c.node.Name())
	}
	if proxy != nil {
		spec.LazyPageServer = proxy.Addr()
	}
	j, err := c.m.Import(ctx, spec, path, in.Size)
	if err != nil {
		if proxy != nil {
			if perr := proxy.Close(); perr != nil {
				err = fmt.Errorf("%w (the tunnel to the source's page server: %v)", err, perr)
			}
		}
		_ = os.Remove(path)
		_ = os.Remove(dir)
		return nil, err
	}
	if proxy != nil {
		c.followLazy(in, proxy)
	}
	c.log.Info("migrated job restored, stopped until the hand-over", "job", in.ID, "from", in.From, "fetch", tFetch, "restore", time.Since(t0)-tFetch)
	c.mu.Lock()
	if !c.abortedLocked(in.ID, in.Attempt) {
		c.pending[in.ID] = &pendingImport{epoch: in.Epoch, attempt: in.Attempt, timer: time.AfterFunc(pendingTimeout, func() { c.settle(in.ID) })}
		c.mu.Unlock()
		return migrateInReply{PID: j.PID}, nil
	}
	c.mu.Unlock()
	// The source gave up while this node restored (it was slow, or
	// frozen): the copy goes now rather than when it would settle.
	if err := c.m.Discard(context.WithoutCancel(ctx), in.ID); err != nil {
		c.log.Error("discard a copy whose migration was aborted", "job", in.ID, "err", err)
	}
	return nil, errAttemptAborted
}

// errAttemptAborted: a migrate-in of an attempt its source gave up on.
var errAttemptAborted = errors.New("the source gave up on this migration attempt")

// wasAborted reports whether the source gave up on attempt of job id.
func (c *clusterNode) wasAborted(id, attempt string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.abortedLocked(id, attempt)
}

// abortedLocked is wasAborted with c.mu held.
func (c *clusterNode) abortedLocked(id, attempt string) bool {
	return attempt != "" && !c.aborted[[2]string{id, attempt}].IsZero()
}

// take removes a pending import, so that exactly one of resume, abort
// and settle acts on it.
func (c *clusterNode) take(id string) *pendingImport { return c.takeAttempt(id, "") }

// takeAttempt is take for the import that attempt brought (any, with
// attempt empty).
func (c *clusterNode) takeAttempt(id, attempt string) *pendingImport {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pending[id]
	if p != nil && attempt != "" && p.attempt != attempt {
		return nil // a later attempt's
	}
	if p != nil {
		p.timer.Stop()
		delete(c.pending, id)
	}
	return p
}

// putBack returns an imported copy taken with take to the pending ones,
// to be settled from the record later.
func (c *clusterNode) putBack(id string, p *pendingImport) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending[id] != nil {
		return // another import of the job arrived meanwhile
	}
	p.timer = time.AfterFunc(pendingTimeout/4, func() { c.settle(id) })
	c.pending[id] = p
}

// handleMigrateResume is the target's step 5: resume only as the owner.
func (c *clusterNode) handleMigrateResume(ctx context.Context, raw json.RawMessage) (any, error) {
	t0 := time.Now()
	var r migrateResume
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, status.Error(codes.InvalidArgument, "unreadable request: "+err.Error())
	}
	rec, err := c.recordAt(ctx, r.ID, r.Epoch)
	if err != nil {
		return nil, err
	}
	if rec.Owner != c.node.Name() || rec.Epoch != r.Epoch {
		return nil, fmt.Errorf("job %s: resume at epoch %d refused, the record says %s at %d: %w", r.ID, r.Epoch, rec.Owner, rec.Epoch, cluster.ErrStaleEpoch)
	}
	p := c.take(r.ID)
	if p != nil && p.lazyErr != nil {
		// Its memory stopped arriving and its tree was killed: the
		// source's stopped copy is the job now.
		herr := c.handBack(ctx, r.ID)
		return nil, errors.Join(fmt.Errorf("job %s: not resumed: %w", r.ID, p.lazyErr), herr)
	}
	if p == nil {
		// Resumed already (a retried request, or settle did it).
		j, err := c.m.Get(ctx, r.ID)
		if err != nil {
			return nil, err
		}
		return migrateResumeReply{PID: j.PID}, nil
	}
	if err := c.holdLease(ctx, r.ID, r.Epoch); err != nil {
		c.putBack(r.ID, p)
		return nil, fmt.Errorf("job %s: not resumed: %w", r.ID, err)
	}
	c.m.Crashpoint(fault.CrashMigrateBeforeResume)
	resumedAfter := time.Since(t0)
	j, err := c.m.Resume(ctx, r.ID, resumeSettle)
	if err != nil {
		return nil, err
	}
	return migrateResumeReply{PID: j.PID, ResumedAfterMS: resumedAfter.Milliseconds()}, nil
}

// recordAt reads a job's record, waiting up to 10 s for it to reach epoch:
// a replicated bucket may answer a read from a replica that has not seen
// the latest write yet (seen with three servers, one just killed), and
// the caller of a verb may know of a newer epoch than that replica.
func (c *clusterNode) recordAt(ctx context.Context, id string, epoch uint64) (cluster.JobRecord, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, err := c.records.Get(ctx, id)
		if (err == nil && rec.Epoch >= epoch) || time.Now().After(deadline) || ctx.Err() != nil {
			return rec, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// handleMigrateAbort removes a stopped copy the source gave up on — never
// one that the record says this node owns.
func (c *clusterNode) handleMigrateAbort(ctx context.Context, raw json.RawMessage) (any, error) {
	var r migrateAbort
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, status.Error(codes.InvalidArgument, "unreadable request: "+err.Error())
	}
	if rec, err := c.records.Get(ctx, r.ID); err == nil && rec.Owner == c.node.Name() {
		return nil, fmt.Errorf("job %s belongs to this node (epoch %d): not aborted", r.ID, rec.Epoch)
	}
	c.mu.Lock()
	p := c.pushes[r.ID]
	if r.Attempt != "" {
		if c.aborted == nil {
			c.aborted = map[[2]string]time.Time{}
		}
		for k, at := range c.aborted {
			if time.Since(at) > 2*pendingTimeout {
				delete(c.aborted, k)
			}
		}
		c.aborted[[2]string{r.ID, r.Attempt}] = time.Now()
	}
	c.mu.Unlock()
	if p != nil && (r.Attempt == "" || p.attempt == r.Attempt) {
		c.dropPush(r.ID, p) // an archive that was arriving
	}
	if c.takeAttempt(r.ID, r.Attempt) == nil {
		return struct{}{}, nil // nothing pending
	}
	return struct{}{}, c.m.Discard(ctx, r.ID)
}

// settle decides a pending import's fate from the record, when neither
// resume nor abort arrived.
func (c *clusterNode) settle(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, err := c.records.Get(ctx, id)
	if err != nil {
		c.log.Warn("settle an imported job: the record is unreadable; trying again later", "job", id, "err", err)
		c.mu.Lock()
		if p := c.pending[id]; p != nil {
			p.timer = time.AfterFunc(pendingTimeout/4, func() { c.settle(id) })
		}
		c.mu.Unlock()
		return
	}
	p := c.take(id)
	if p == nil {
		return
	}
	if rec.Owner == c.node.Name() && p.lazyErr != nil {
		if err := c.handBack(ctx, id); err != nil {
			c.log.Error("hand a lazily imported job back to its source", "job", id, "err", err)
		}
		return
	}
	if rec.Owner == c.node.Name() {
		if err := c.holdLease(ctx, id, rec.Epoch); err != nil {
			c.log.Warn("settle an imported job: its lease is not free yet; trying again later", "job", id, "err", err)
			c.putBack(id, p)
			return
		}
		if _, err := c.m.Resume(ctx, id, resumeSettle); err != nil {
			c.log.Error("resume an imported job this node owns", "job", id, "err", err)
		}
		return
	}
	if err := c.m.Discard(ctx, id); err != nil {
		c.log.Error("discard an imported job another node owns", "job", id, "err", err)
	}
}
