package jobs

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
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
	// One durable write starts the checkpoint: the state and a pending
	// record (never listed as good; marked failed if the daemon dies).
	ck := &store.Checkpoint{JobID: j.ID, State: store.CheckpointPending}
	j, err = m.store.Commit(ctx, j.ID, store.Change{
		Job: func(j *store.Job) error {
			if err := check("dump", State(j.State), j.Name); err != nil {
				return err
			}
			j.State = string(Dumping)
			return nil
		},
		Put: []*store.Checkpoint{ck},
	})
	if err != nil {
		return nil, err
	}
	select { // wait for a slot; the job shows as dumping meanwhile
	case m.dumps <- struct{}{}:
	case <-ctx.Done():
		m.setState(j.ID, Running, "")
		ck.State, ck.Error = store.CheckpointFailed, "cancelled while waiting for another checkpoint to finish"
		_ = m.store.PutCheckpoint(context.Background(), ck)
		return nil, ctx.Err()
	}
	defer func() { <-m.dumps }()
	start := time.Now()
	var (
		path  string
		size  int64
		stats *archive.DumpStats
		derr  error
	)
	if j.Runtime != "" {
		path, size, stats, derr = m.dumpContainer(ctx, j, leaveRunning)
	} else {
		var res *checkpoint.DumpResult
		res, derr = m.engine.Dump(ctx, checkpoint.DumpRequest{
			PID: j.PID, Dir: m.jobDir(j.ID), LeaveRunning: leaveRunning,
			HookEnv: []string{"CEDANA_JOB_ID=" + j.ID, "CEDANA_JOB_NAME=" + j.Name},
		})
		if derr == nil {
			path, size, stats = res.Path, res.Size, res.Manifest.Stats
		}
	}
	elapsed := time.Since(start)
	if derr != nil {
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
	// One durable write completes it: the record, the job's state, what
	// retention drops and the event. Dropped archives are removed after,
	// so that no record ever points to a missing archive.
	drop := m.retention(j, ck)
	msg := fmt.Sprintf("%s checkpoint %s: %s, %d bytes in %s", why, ck.ID, ck.Path, ck.Size, elapsed.Round(time.Millisecond))
	if len(drop) > 0 {
		msg += fmt.Sprintf("; removed %s (retention policy)", strings.Join(checkpointIDs(drop), ", "))
	}
	j, err = m.store.Commit(context.Background(), j.ID, store.Change{
		Job: func(j *store.Job) error {
			j.State = string(next)
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
	m.metrics.dumped(elapsed, size, stats)
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

// Restore restores a job from a checkpoint: ckptID, or the newest
// complete one.
func (m *Manager) Restore(ctx context.Context, ref, ckptID string) (*store.Job, error) {
	return m.restore(ctx, ref, ckptID, false)
}

func (m *Manager) restore(ctx context.Context, ref, ckptID string, auto bool) (*store.Job, error) {
	j, err := m.store.GetJob(ctx, ref)
	if err != nil {
		return nil, err
	}
	if err := check("restore", State(j.State), j.Name); err != nil {
		return nil, err
	}
	ck, err := m.pickCheckpoint(ctx, j, ckptID)
	if err != nil {
		return nil, err
	}
	j, err = m.transition(ctx, j.ID, "restore", Restoring, func(j *store.Job) {
		if auto {
			j.Restores++
		}
	})
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var (
		pid         int
		containerID = j.Container
		rerr        error
	)
	if j.Runtime != "" {
		pid, containerID, rerr = m.restoreContainer(ctx, j, ck.Path)
	} else {
		var res *checkpoint.RestoreResult
		res, rerr = m.engine.Restore(ctx, checkpoint.RestoreRequest{
			Path:    ck.Path,
			HookEnv: []string{"CEDANA_JOB_ID=" + j.ID, "CEDANA_JOB_NAME=" + j.Name},
		})
		if rerr == nil {
			pid = res.PID
		}
	}
	if rerr != nil {
		m.setState(j.ID, Failed, "restore failed: "+rerr.Error())
		m.metrics.restoreFailed()
		m.event(j.ID, "restore-failed", "restore from %s failed: %v", ck.ID, rerr)
		return nil, rerr
	}
	st, _ := identity(pid)
	j, err = m.store.UpdateJob(context.Background(), j.ID, func(j *store.Job) error {
		j.State, j.PID, j.StartTime, j.Error, j.ExitCode = string(Running), pid, st, "", nil
		j.Container = containerID
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.metrics.restored(time.Since(start))
	kind := "restored"
	if auto {
		kind = "auto-restored"
	}
	m.event(j.ID, kind, "%s from checkpoint %s as PID %d in %s", kind, ck.ID, pid, time.Since(start).Round(time.Millisecond))
	m.supervise(j, j.Runtime == "") // a container's init is the runtime's child, not ours
	return j, nil
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
		if err := removeArchive(c.Path); err != nil {
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
