package jobs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/storage"
	"github.com/cedana/cedana/internal/store"
)

// Start reconciles the catalogue with the machine, as after a crash: it
// removes half-written archives, settles checkpoints that were being
// written (complete if their archive reached its final path, failed
// otherwise — never complete without an archive), resumes jobs that a dump
// had frozen, re-adopts jobs whose processes still run (identified by PID
// and start time, never by PID alone) and trees a restore brought back,
// resumes pending automatic restores, and treats the other jobs as failed.
func (m *Manager) Start(ctx context.Context) error {
	m.removePartials()
	done, err := m.recoverCheckpoints(ctx)
	if err != nil {
		return err
	}
	jobs, err := m.store.ListJobs(ctx)
	if err != nil {
		return err
	}
	for _, j := range jobs {
		m.reconcile(ctx, j, done[j.ID])
	}
	m.reconcileClones(ctx)
	return nil
}

// reconcileClones keeps the addresses of clones that still run and
// removes the network namespaces of those that ended while no daemon ran,
// and the pool's namespaces a killed daemon left (those not handed to a
// clone that still runs).
func (m *Manager) reconcileClones(ctx context.Context) {
	jobs, err := m.store.ListJobs(ctx)
	if err != nil {
		return
	}
	keep := map[string]bool{}
	for _, j := range jobs {
		switch {
		case j.NetNS == "":
		case State(j.State).alive():
			m.tpl().net.Reserve(j.Address)
			keep[j.NetNS] = true
		default:
			m.cloneEnded(j)
		}
	}
	if gone := m.tpl().net.Sweep(keep); len(gone) > 0 {
		m.log.Info("removed the network namespaces an earlier daemon kept ready for clones", "count", len(gone))
	}
}

// recoverCheckpoints settles pending checkpoints. The archive's final path
// is recorded before the dump starts and the engine renames the archive
// there only once it is durable, so a file at that path is a complete
// checkpoint — one whose tree the dump may already have killed: recording
// it keeps the job restorable instead of losing it. It returns those
// checkpoints by job.
func (m *Manager) recoverCheckpoints(ctx context.Context) (map[string]*store.Checkpoint, error) {
	cks, err := m.store.ListCheckpoints(ctx, "")
	if err != nil {
		return nil, err
	}
	done := map[string]*store.Checkpoint{}
	for _, c := range cks {
		if c.State != store.CheckpointPending {
			continue
		}
		if size, ok := m.completeArchive(c.Path); ok {
			c.State, c.Size, c.Error, c.CompletedAt = store.CheckpointComplete, size, "", time.Now().UTC()
			if err := m.store.PutCheckpoint(ctx, c); err != nil {
				return nil, err
			}
			done[c.JobID] = c
			m.event(c.JobID, "checkpoint-recovered", "checkpoint %s (%s) was written completely before the daemon stopped; recorded as complete", c.ID, c.Path)
			continue
		}
		c.State, c.Error = store.CheckpointFailed, "the daemon stopped while this checkpoint was being written"
		if err := m.store.PutCheckpoint(ctx, c); err != nil {
			return nil, err
		}
		m.event(c.JobID, "dump-failed", "checkpoint %s was interrupted by a daemon restart; marked failed", c.ID)
	}
	return done, nil
}

// completeArchive reports whether path holds a whole archive (its
// manifest reads back), and its size.
func completeArchive(path string) (int64, bool) {
	if path == "" {
		return 0, false
	}
	st, err := os.Stat(path)
	if err != nil || !st.Mode().IsRegular() {
		return 0, false
	}
	r, err := archive.Open(path, archive.DefaultLimits())
	if err != nil {
		return 0, false
	}
	r.Close()
	return st.Size(), true
}

// reconcile settles one job after a restart. ck is a checkpoint of the job
// that recoverCheckpoints found complete, if any.
func (m *Manager) reconcile(ctx context.Context, j *store.Job, ck *store.Checkpoint) {
	s := State(j.State)
	alive := j.PID > 0 && sameProcess(j.PID, j.StartTime)
	if m.gate != nil && (s.alive() || s == Restoring || (s == Failed && j.RestorePending)) {
		// Cluster mode, rule 5 of docs/cluster.md: nothing found here runs
		// again before the cluster's record says it is still this node's.
		err := m.allowed(ctx, j)
		if errors.Is(err, ErrOwnedElsewhere) {
			_ = m.Fence(ctx, j.ID, err.Error())
			return
		}
		if err == nil && alive {
			resumeTree(j.PID) // the fence watchdog may have stopped it while no daemon ran
		}
	}
	switch {
	case s == Dumping && ck != nil:
		m.recoverDump(ctx, j, ck, alive)
	case (s == Running || s == Dumping) && alive:
		if s == Dumping {
			resumeTree(j.PID) // a dump may have left it frozen
		}
		j2, err := m.store.UpdateJob(ctx, j.ID, func(j *store.Job) error {
			j.State, j.DumpLeaveRunning = string(Running), false
			return nil
		})
		if err != nil {
			return
		}
		m.event(j.ID, "re-adopted", "re-adopted PID %d after a daemon restart", j.PID)
		m.supervise(j2, false)
	case s == Running || s == Dumping:
		m.setState(j.ID, Running, "")
		m.died(j.ID, j.PID, j.StartTime, exitStatus{})
	case s == Restoring:
		m.recoverRestore(ctx, j)
	case s == Starting:
		// The process may have started, but nobody was told: end it, so
		// that no copy runs unmanaged.
		m.killCgroup(j)
		m.setState(j.ID, Failed, "the daemon stopped while the job was starting")
		m.event(j.ID, "failed", "the daemon stopped while the job was starting")
	case s == Failed && j.RestorePending:
		m.event(j.ID, "auto-restore-resumed", "resuming the automatic restore that was pending when the daemon stopped")
		m.startAutoRestore(j.ID)
	}
}

// recoverDump settles a job whose dump completed (its archive is durable)
// but whose daemon died before recording it: before the tree was killed
// it is still there, frozen — resume it, it keeps running; after, the job
// is checkpointed, as the dump intended.
func (m *Manager) recoverDump(ctx context.Context, j *store.Job, ck *store.Checkpoint, alive bool) {
	next := Checkpointed
	if alive {
		resumeTree(j.PID)
		next = Running
	} else if j.DumpLeaveRunning {
		// It died on its own while a leave-running dump held it.
		next = Running
	}
	msg := fmt.Sprintf("checkpoint %s: %s, %d bytes (recorded after a daemon restart)", ck.ID, ck.Path, ck.Size)
	j2, err := m.completeCheckpoint(j, ck, next, msg)
	if err != nil {
		m.log.Error("record recovered checkpoint", "job", j.ID, "err", err)
		return
	}
	switch {
	case alive:
		m.supervise(j2, false)
	case next == Running:
		m.died(j.ID, j.PID, j.StartTime, exitStatus{})
	}
}

// removePartials deletes archives that a crash left half-written. The
// archive writer names them ".<name>.partial-<random>" until they are
// complete and renamed.
func (m *Manager) removePartials() {
	// Deduplicated checkpoints on local disk are written through a dir
	// backend, whose temporary files a killed daemon leaves behind. The
	// checkpoint directory is this daemon's (its state dir is locked), so
	// nothing writes there yet.
	if m.ckStore != nil && m.cfg.Storage == nil {
		if n, err := storage.Sweep(context.Background(), m.ckStore, 0); n > 0 || err != nil {
			m.log.Info("removed temporary files of interrupted checkpoints", "count", n, "err", err)
		}
	}
	matches, _ := filepath.Glob(filepath.Join(m.cfg.CheckpointDir, "*", ".*.partial-*"))
	for _, p := range matches {
		if strings.Contains(filepath.Base(p), ".partial-") {
			if err := os.Remove(p); err == nil {
				m.log.Info("removed a half-written archive", "path", p)
			}
		}
	}
}

// resumeTree sends SIGCONT to a tree CRIU left stopped.
func resumeTree(pid int) {
	tree, err := proc.Tree(pid)
	if err != nil {
		return
	}
	for _, p := range tree {
		_ = syscall.Kill(p, syscall.SIGCONT)
	}
}
