package jobs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/store"
)

// What the cluster asks of the job manager (docs/cluster.md, rules 1–6).
// On one machine none of this is used: the gate is nil and no job is ever
// fenced.
//
//	Gate     asked before a job runs again without a user asking (a daemon
//	         restart re-adopting it, restore on failure): another node may
//	         own it now.
//	Freeze   stops every process of a copy whose lease could not be
//	Thaw     renewed in time, and lets it run again if the lease was.
//	Fence    ends a copy for good: another node runs the job now.
//	TakeOver restores a job of a lost node here.

// ErrOwnedElsewhere means the cluster's record gives a job to another node:
// this node must not run it.
var ErrOwnedElsewhere = errors.New("the job belongs to another node")

// Gate says whether j may run on this node now: nil, ErrOwnedElsewhere
// (wrapped, with the owner), or another error when that cannot be known
// yet (the cluster is unreachable).
type Gate func(ctx context.Context, j *store.Job) error

// SetGate installs the cluster's gate. It must be called before Start.
func (m *Manager) SetGate(g Gate) { m.gate = g }

// allowed asks the gate, if any.
func (m *Manager) allowed(ctx context.Context, j *store.Job) error {
	if m.gate == nil {
		return nil
	}
	return m.gate(ctx, j)
}

// tasks lists the processes of a job's local copy: its tree and whatever
// else is in its cgroup.
func (m *Manager) tasks(j *store.Job) []int {
	var pids []int
	if j.PID > 0 && sameProcess(j.PID, j.StartTime) {
		pids, _ = proc.Tree(j.PID)
	}
	if j.Cgroup != "" && m.cg.available() {
		if more, err := m.cg.procs(j.Cgroup); err == nil {
			for _, p := range more {
				if !slices.Contains(pids, p) {
					pids = append(pids, p)
				}
			}
		}
	}
	return pids
}

// signalJob sends sig to every process of the job's local copy.
func (m *Manager) signalJob(id string, sig syscall.Signal) (int, error) {
	j, err := m.store.GetJob(context.Background(), id)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, p := range m.tasks(j) {
		if err := syscall.Kill(p, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("PID %d: %w", p, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// Freeze stops every process of the job's local copy (SIGSTOP: a signal,
// not the cgroup freezer, because nodes sharing a machine in tests share
// the paths CRIU restores cgroups to). Nothing is lost; Thaw undoes it.
func (m *Manager) Freeze(id string) error {
	m.setFrozen(id, true) // first: a checkpoint that ends now stops the tree again
	n, err := m.signalJob(id, syscall.SIGSTOP)
	if err == nil && n > 0 {
		m.event(id, "frozen", "stopped %d process(es): this node could not renew the job's lease in time (docs/cluster.md, rule 3)", n)
	}
	return err
}

// refreeze stops job id's tree again if the fencer froze it while
// something that held the tree stopped resumed it after (CRIU at the end
// of a leave-running dump, a migration that failed): the copy must stay
// stopped until the fencer holds the lease again and thaws it.
func (m *Manager) refreeze(id string) {
	if m.isFrozen(id) {
		_, _ = m.signalJob(id, syscall.SIGSTOP)
	}
}

// Thaw lets a frozen copy run again.
func (m *Manager) Thaw(id string) error {
	if j, err := m.store.GetJob(context.Background(), id); err == nil && ((State(j.State) == Dumping && !j.DumpLeaveRunning) || m.isHeldStopped(id)) {
		// A checkpoint that keeps the tree stopped (a migration's
		// source): it decides when the tree runs again.
		return fmt.Errorf("job %s is being checkpointed to stay stopped: not resumed", j.Name)
	}
	m.setFrozen(id, false)
	n, err := m.signalJob(id, syscall.SIGCONT)
	if err == nil && n > 0 {
		m.event(id, "thawed", "the job's lease is held again: %d process(es) continue", n)
	}
	return err
}

// Fence ends the job's local copy for good because another node runs the
// job now: the job becomes moved first (so that its death is not taken
// for a failure and restored), then every process of the copy is killed.
func (m *Manager) Fence(ctx context.Context, id, why string) error {
	j, err := m.store.UpdateJob(ctx, id, func(j *store.Job) error {
		j.State, j.Error, j.RestorePending = string(Moved), why, false
		return nil
	})
	if err != nil {
		return err
	}
	m.unsupervise(id)
	m.setFrozen(id, false)
	pids := m.tasks(j)
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(5 * time.Second); j.PID > 0 && sameProcess(j.PID, j.StartTime) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	m.cloneEnded(j)
	m.event(id, "fenced", "this copy was ended (%d process(es)): %s", len(pids), why)
	m.log.Warn("fenced a stale copy of a job", "job", id, "why", why)
	return nil
}

// TakeOverSpec is a job of a lost node that this node restores.
type TakeOverSpec struct {
	ImportSpec
	// Archive is the location of the checkpoint to restore (a key in the
	// shared storage backend), taken at CheckpointAt.
	Archive      string
	CheckpointAt time.Time
	// Note is recorded as the job's first event here (from which node,
	// which checkpoint, how much work was lost).
	Note string
}

// TakeOver records a job of a lost node and restores it here, running,
// from its latest checkpoint in shared storage. What is left here of an
// earlier life of the job (this node owned it before) is forgotten first;
// a copy of it that still runs here is refused.
func (m *Manager) TakeOver(ctx context.Context, s TakeOverSpec) (*store.Job, error) {
	if old, err := m.store.GetJob(ctx, s.ID); err == nil {
		if State(old.State).alive() || State(old.State) == Restoring {
			return nil, fmt.Errorf("%w: job %s still has a live copy on this node", ErrIllegalTransition, old.Name)
		}
		m.unsupervise(old.ID)
		if err := m.store.DeleteJob(ctx, old.ID); err != nil {
			return nil, fmt.Errorf("forget this node's old record of job %s: %w", old.Name, err)
		}
	}
	if err := validName(s.Name); err != nil {
		return nil, err
	}
	j := &store.Job{ID: s.ID, Name: s.Name, State: string(Failed), Cmd: s.Cmd, Dir: s.Dir,
		LogPath: s.LogPath, Policy: s.Policy, Error: "its node was lost"}
	if m.cg.available() {
		j.Cgroup = m.cg.name(s.ID)
	}
	if err := m.store.CreateJob(ctx, j); err != nil {
		return nil, fmt.Errorf("job %s cannot come here: %w", s.Name, err)
	}
	at := s.CheckpointAt
	if at.IsZero() {
		at = time.Now()
	}
	ck := &store.Checkpoint{JobID: j.ID, State: store.CheckpointComplete, Path: s.Archive, CompletedAt: at.UTC()}
	if _, err := m.store.Commit(ctx, j.ID, store.Change{
		Put:    []*store.Checkpoint{ck},
		Events: []store.Event{{Type: "failover", Message: s.Note}},
	}); err != nil {
		_ = m.store.DeleteJob(context.Background(), j.ID)
		return nil, err
	}
	j, err := m.restoreWith(ctx, j.ID, ck.ID, restoreOpts{})
	if err != nil {
		m.event(s.ID, "failover-failed", "restore of %s failed: %v", s.Archive, err)
		_ = m.Fence(context.Background(), s.ID, "the failover restore failed")
		return nil, err
	}
	return j, nil
}

// Tasks lists the processes of the job's local copy.
func (m *Manager) Tasks(j *store.Job) []int { return m.tasks(j) }

// CgroupDir is the absolute directory of the job's cgroup, or "".
func (m *Manager) CgroupDir(j *store.Job) string {
	if j.Cgroup == "" || !m.cg.available() {
		return ""
	}
	return m.cg.dir(j.Cgroup)
}

// Shared reports whether loc is an archive in the storage backend (which
// other nodes read), not a file on this node.
func (m *Manager) Shared(loc string) bool {
	if m.cfg.Storage == nil {
		return false // the checkpoint directory, even deduplicated
	}
	_, ok := m.inStore(loc)
	return ok
}

// setFrozen records whether the fencer holds job id frozen. Periodic and
// requested checkpoints are refused meanwhile: CRIU resumes a stopped tree
// after a leave-running dump.
func (m *Manager) setFrozen(id string, on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.frozen == nil {
		m.frozen = map[string]bool{}
	}
	if on {
		m.frozen[id] = true
	} else {
		delete(m.frozen, id)
	}
}

func (m *Manager) isFrozen(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.frozen[id]
}

// setHeldStopped records that a migration keeps job id's tree stopped
// (Thaw must not resume it).
func (m *Manager) setHeldStopped(id string, on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.heldStopped == nil {
		m.heldStopped = map[string]bool{}
	}
	if on {
		m.heldStopped[id] = true
	} else {
		delete(m.heldStopped, id)
	}
}

func (m *Manager) isHeldStopped(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.heldStopped[id]
}
