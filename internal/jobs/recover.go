package jobs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/store"
)

// Start reconciles the catalogue with the machine, as after a crash: it
// removes half-written archives, marks checkpoints that were being
// written as failed (never as good), resumes jobs that a dump had frozen,
// re-adopts jobs whose processes still run (identified by PID and start
// time, never by PID alone), and treats the others as failed.
func (m *Manager) Start(ctx context.Context) error {
	m.removePartials()
	cks, err := m.store.ListCheckpoints(ctx, "")
	if err != nil {
		return err
	}
	for _, c := range cks {
		if c.State != store.CheckpointPending {
			continue
		}
		c.State, c.Error = store.CheckpointFailed, "the daemon stopped while this checkpoint was being written"
		if err := m.store.PutCheckpoint(ctx, c); err != nil {
			return err
		}
		_ = removeArchive(c.Path)
		m.event(c.JobID, "dump-failed", "checkpoint %s was interrupted by a daemon restart; marked failed", c.ID)
	}
	jobs, err := m.store.ListJobs(ctx)
	if err != nil {
		return err
	}
	for _, j := range jobs {
		m.reconcile(ctx, j)
	}
	return nil
}

func (m *Manager) reconcile(ctx context.Context, j *store.Job) {
	s := State(j.State)
	alive := j.PID > 0 && sameProcess(j.PID, j.StartTime)
	switch {
	case (s == Running || s == Dumping) && alive:
		if s == Dumping {
			resumeTree(j.PID) // a dump may have left it frozen
		}
		j2, err := m.store.UpdateJob(ctx, j.ID, func(j *store.Job) error { j.State = string(Running); return nil })
		if err != nil {
			return
		}
		m.event(j.ID, "re-adopted", "re-adopted PID %d after a daemon restart", j.PID)
		m.supervise(j2, false)
	case s == Running || s == Dumping:
		m.setState(j.ID, Running, "")
		m.died(j.ID, j.PID, j.StartTime, exitStatus{})
	case s == Starting || s == Restoring:
		if alive && s == Restoring {
			// The restore completed as the daemon died; keep the process.
			m.setState(j.ID, Running, "")
			j.State = string(Running)
			m.supervise(j, false)
			return
		}
		m.setState(j.ID, Failed, fmt.Sprintf("the daemon stopped while the job was %s", s))
		m.event(j.ID, "failed", "the daemon stopped while the job was %s", s)
		if j.Policy.RestoreOnFailure && s == Restoring {
			m.wg.Add(1)
			go func() { defer m.wg.Done(); m.autoRestore(j.ID) }()
		}
	}
}

// removePartials deletes archives that a crash left half-written. The
// archive writer names them ".<name>.partial-<random>" until they are
// complete and renamed.
func (m *Manager) removePartials() {
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
