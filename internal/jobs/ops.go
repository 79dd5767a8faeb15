package jobs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/chunks"
	"github.com/cedana/cedana/internal/fault"
	"github.com/cedana/cedana/internal/store"
)

// Dump checkpoints a job now. With leaveRunning the job goes on running
// (periodic checkpoints); without, it is stopped once the archive is on
// disk and becomes checkpointed.
func (m *Manager) Dump(ctx context.Context, ref string, leaveRunning bool) (*store.Checkpoint, error) {
	return m.dump(ctx, ref, leaveRunning, "requested")
}

func (m *Manager) dump(ctx context.Context, ref string, leaveRunning bool, why string) (*store.Checkpoint, error) {
	j, err := m.store.GetJob(ctx, ref)
	if err != nil {
		return nil, err
	}
	return m.dumpJob(ctx, j, leaveRunning, why)
}

// dumpJob is dump of a job just read from the store (its state is checked
// again in the transaction that starts the checkpoint).
func (m *Manager) dumpJob(ctx context.Context, j *store.Job, leaveRunning bool, why string) (*store.Checkpoint, error) {
	if err := m.errLazyLoading(j); err != nil {
		return nil, err
	}
	if m.isFrozen(j.ID) {
		// CRIU would resume the stopped tree after a leave-running dump.
		return nil, fmt.Errorf("%w: job %s is frozen: this node could not renew its lease in the cluster (docs/cluster.md, rule 3)", ErrIllegalTransition, j.Name)
	}
	// The archive's final path is chosen, and recorded, before anything
	// happens: the engine writes it under a temporary name and renames it
	// into place only once it is durable, so a restarted daemon that finds
	// a file at the recorded path knows the checkpoint is complete even if
	// the daemon died between the kill of the dumped tree and the commit
	// below (see recoverCheckpoints).
	path, err := m.newArchiveLocation(ctx, j)
	if err != nil {
		return nil, err
	}
	// One durable write starts the checkpoint: the state and a pending
	// record (never listed as good; resolved on restart).
	ck := &store.Checkpoint{JobID: j.ID, State: store.CheckpointPending, Path: path}
	j, err = m.store.Commit(ctx, j.ID, store.Change{
		Job: func(j *store.Job) error {
			if err := check("dump", State(j.State), j.Name); err != nil {
				return err
			}
			j.State, j.DumpLeaveRunning = string(Dumping), leaveRunning
			return nil
		},
		Put: []*store.Checkpoint{ck},
	})
	if err != nil {
		return nil, err
	}
	m.crashpoint(fault.CrashDumpBeforeEngine)
	select { // wait for a slot; the job shows as dumping meanwhile
	case m.dumps <- struct{}{}:
	case <-ctx.Done():
		m.setState(j.ID, Running, "")
		ck.State, ck.Error = store.CheckpointFailed, "cancelled while waiting for another checkpoint to finish"
		_ = m.store.PutCheckpoint(context.Background(), ck)
		return nil, ctx.Err()
	}
	defer func() { <-m.dumps }()
	start, cpu0 := time.Now(), selfCPU()
	var (
		criuCPU time.Duration
		size    int64
		stats   *archive.DumpStats
		derr    error
		// observe reads, and base receives, the baseline that later
		// periodic runs compare the job with (skip.go).
		observe func()
		base    = new(*treeState)
		stored  *chunks.Stats // what deduplication stored
	)
	if j.Runtime != "" {
		path, size, stats, derr = m.dumpContainer(ctx, j, path, leaveRunning)
	} else {
		var res *checkpoint.DumpResult
		observe, base = m.observeAfterCRIU(j, leaveRunning)
		req := m.dumpRequest(path) // a local path or a key in the storage backend
		req.PID, req.LeaveRunning = j.PID, leaveRunning
		req.HookEnv = []string{"CEDANA_JOB_ID=" + j.ID, "CEDANA_JOB_NAME=" + j.Name}
		req.AfterCRIU = observe
		req.LogGroup, req.KeepLogs = logGroup(j, why), periodicLogs
		res, derr = m.engine.Dump(ctx, req)
		if derr == nil {
			path, size, stats, criuCPU = res.Path, res.Size, res.Manifest.Stats, res.CRIUCPU
			stored = res.Stored
		}
	}
	elapsed, daemonCPU := time.Since(start), selfCPU()-cpu0
	m.refreeze(j.ID) // frozen by the fencer while CRIU held the tree: CRIU resumed it
	if derr == nil {
		m.crashpoint(fault.CrashAfterKillBeforeCommit)
	}
	if derr != nil {
		m.skips.forget(j.ID)
		ck.State, ck.Error = store.CheckpointFailed, derr.Error()
		msg := fmt.Sprintf("%s checkpoint failed (the job kept running): %v", why, derr)
		if _, err := m.store.Commit(context.Background(), j.ID, store.Change{
			Job:    func(j *store.Job) error { j.State, j.Error = string(Running), ""; return nil },
			Put:    []*store.Checkpoint{ck},
			Events: []store.Event{{Type: "dump-failed", Message: msg}},
		}); err != nil {
			m.log.Error("record failed checkpoint", "job", j.ID, "err", err)
		}
		m.log.Info(msg, "job", j.ID, "event", "dump-failed")
		m.metrics.dumpFailed()
		if j.Runtime != "" {
			if j2, err := m.refreshContainer(context.Background(), j); err == nil {
				m.supervise(j2, false)
				return nil, derr
			}
		}
		m.afterLeaveRunning(j) // the process may have died during the attempt
		return nil, derr
	}
	ck.State, ck.Path, ck.Size = store.CheckpointComplete, path, size
	ck.CompletedAt, ck.DumpSeconds = time.Now().UTC(), elapsed.Seconds()
	next := Checkpointed
	if leaveRunning {
		next = Running
	}
	msg := fmt.Sprintf("%s checkpoint %s: %s, %d bytes in %s%s%s", why, ck.ID, ck.Path, ck.Size, elapsed.Round(time.Millisecond),
		storedNote(stored), m.checkpointCost(why, daemonCPU, criuCPU))
	j, err = m.completeCheckpoint(j, ck, next, msg)
	if err != nil {
		return nil, err
	}
	m.metrics.dumped(elapsed, size, stats)
	m.checkpointed(j.ID, ck.ID, *base)
	switch {
	case !leaveRunning:
		m.unsupervise(j.ID)
	case j.Runtime != "":
		// The container was restored in place: watch its new init.
		if j2, err := m.refreshContainer(context.Background(), j); err == nil {
			j = j2
			m.supervise(j, false)
		} else {
			m.died(j.ID, j.PID, j.StartTime, exitStatus{})
		}
	default:
		m.afterLeaveRunning(j)
	}
	return ck, nil
}

// completeCheckpoint records a complete checkpoint in one durable write:
// the record, the job's next state, what retention drops and the event.
// Dropped archives are removed after, so that no record ever points to a
// missing archive.
func (m *Manager) completeCheckpoint(j *store.Job, ck *store.Checkpoint, next State, msg string) (*store.Job, error) {
	drop := m.retention(j, ck)
	if len(drop) > 0 {
		msg += fmt.Sprintf("; removed %s (retention policy)", strings.Join(checkpointIDs(drop), ", "))
	}
	j, err := m.store.Commit(context.Background(), j.ID, store.Change{
		Job: func(j *store.Job) error {
			j.State, j.DumpLeaveRunning = string(next), false
			j.LastCheckpointID, j.LastCheckpointAt = ck.ID, ck.CompletedAt
			return nil
		},
		Put:    []*store.Checkpoint{ck},
		Delete: checkpointIDs(drop),
		Events: []store.Event{{Type: "checkpointed", Message: msg}},
	})
	if err != nil {
		return nil, err
	}
	m.log.Info(msg, "job", j.ID, "event", "checkpointed")
	m.removeArchives(j.ID, drop)
	return j, nil
}

// newArchivePath picks the path of a job's next archive, one that does not
// exist yet, and creates the job's directory.
func (m *Manager) newArchivePath(j *store.Job) (string, error) {
	dir := m.jobDir(j.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	now := time.Now()
	for n := 0; n < 1000; n++ {
		p := filepath.Join(dir, checkpoint.ArchiveName(j.Name, now, n))
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			return p, nil
		}
	}
	return "", fmt.Errorf("no free archive name in %s", dir)
}

// storedNote says what a deduplicated checkpoint stored: the bytes of its
// new chunks and of its own object, against the archive's.
func storedNote(st *chunks.Stats) string {
	if st == nil {
		return ""
	}
	return fmt.Sprintf("; stored %d new bytes (%d of %d chunks new, %d bytes in the checkpoint's own object)",
		st.NewBytes+st.Skeleton, st.NewChunks, st.Chunks, st.Skeleton)
}

// afterLeaveRunning notices a job that died while a dump held it, when the
// supervisor had to ignore the exit.
func (m *Manager) afterLeaveRunning(j *store.Job) {
	if !sameProcess(j.PID, j.StartTime) {
		m.died(j.ID, j.PID, j.StartTime, exitStatus{known: false})
	}
}

// setState forces a state (used to undo an operation that failed).
func (m *Manager) setState(id string, s State, errMsg string) {
	_, err := m.store.UpdateJob(context.Background(), id, func(j *store.Job) error {
		j.State, j.Error = string(s), errMsg
		return nil
	})
	if err != nil {
		m.log.Error("update job state", "job", id, "state", s, "err", err)
	}
}

// pickCheckpoint returns the requested checkpoint or the newest complete.
func (m *Manager) pickCheckpoint(ctx context.Context, j *store.Job, id string) (*store.Checkpoint, error) {
	if id != "" {
		c, err := m.store.GetCheckpoint(ctx, id)
		if err != nil {
			return nil, err
		}
		if c.JobID != j.ID {
			return nil, fmt.Errorf("%w: checkpoint %s belongs to another job", store.ErrInvalid, id)
		}
		if c.State != store.CheckpointComplete {
			return nil, fmt.Errorf("%w: checkpoint %s is %s", ErrNoCheckpoint, id, c.State)
		}
		return c, nil
	}
	cs, err := m.store.ListCheckpoints(ctx, j.ID)
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		if c.State == store.CheckpointComplete {
			return c, nil
		}
	}
	return nil, fmt.Errorf("%w: job %s has no complete checkpoint to restore from", ErrNoCheckpoint, j.Name)
}

// retention returns the checkpoints the job's policy drops: beyond the
// newest Keep complete ones, or beyond KeepBytes (the newest is always
// kept), and failed records beyond the newest few. fresh, if set, is a
// checkpoint about to be recorded complete, counted as the newest.
func (m *Manager) retention(j *store.Job, fresh *store.Checkpoint) []*store.Checkpoint {
	p := j.Policy
	cs, err := m.store.ListCheckpoints(context.Background(), j.ID)
	if err != nil {
		return nil
	}
	if fresh != nil {
		cs = slices.DeleteFunc(cs, func(c *store.Checkpoint) bool { return c.ID == fresh.ID })
		cs = append([]*store.Checkpoint{fresh}, cs...)
	}
	sortNewestFirst(cs)
	var (
		drop         []*store.Checkpoint
		kept, failed int
		bytes        int64
	)
	for _, c := range cs {
		switch c.State {
		case store.CheckpointComplete:
			if (p.Keep > 0 && kept >= p.Keep) || (p.KeepBytes > 0 && kept > 0 && bytes+c.Size > p.KeepBytes) {
				drop = append(drop, c)
				continue
			}
			kept++
			bytes += c.Size
		case store.CheckpointFailed:
			if failed++; failed > 5 {
				drop = append(drop, c)
			}
		}
	}
	return drop
}

// prune applies the job's retention policy now and returns the IDs of the
// complete checkpoints it removed.
func (m *Manager) prune(j *store.Job) []string {
	drop := m.retention(j, nil)
	if len(drop) == 0 {
		return nil
	}
	if _, err := m.store.Commit(context.Background(), j.ID, store.Change{Delete: checkpointIDs(drop)}); err != nil {
		m.log.Warn("prune checkpoints", "job", j.ID, "err", err)
		return nil
	}
	m.removeArchives(j.ID, drop)
	var removed []string
	for _, c := range drop {
		if c.State == store.CheckpointComplete {
			removed = append(removed, c.ID)
		}
	}
	return removed
}

// removeArchives deletes the archives of checkpoints whose records are gone.
func (m *Manager) removeArchives(jobID string, cs []*store.Checkpoint) {
	for _, c := range cs {
		if err := m.removeArchive(c.Path); err != nil {
			m.log.Warn("remove pruned archive", "job", jobID, "checkpoint", c.ID, "err", err)
		}
		m.metrics.pruned()
	}
}

func checkpointIDs(cs []*store.Checkpoint) []string {
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	return ids
}

// Drain checkpoints every running job and stops it: what to do before the
// machine goes away (preemption, maintenance).
func (m *Manager) Drain(ctx context.Context) ([]*store.Checkpoint, []error) {
	jobs, err := m.store.ListJobs(ctx)
	if err != nil {
		return nil, []error{err}
	}
	var (
		cks  []*store.Checkpoint
		errs []error
	)
	for _, j := range jobs {
		if State(j.State) != Running {
			continue
		}
		ck, err := m.dump(ctx, j.ID, false, "drain")
		if err != nil {
			errs = append(errs, fmt.Errorf("job %s: %w", j.Name, err))
			continue
		}
		cks = append(cks, ck)
	}
	return cks, errs
}
