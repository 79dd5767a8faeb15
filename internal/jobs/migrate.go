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
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/container"
	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/store"
)

// Migration moves a job between nodes with both copies stopped at the
// moment ownership changes (docs/cluster.md, rule 7). This file holds the
// two local halves; internal/daemon's cluster code coordinates them over
// NATS and records the owner and epoch:
//
//	source: MigrateOut — checkpoint, keep the tree stopped, call Mover
//	target: Import     — record the job, restore it left stopped
//	source: (Mover moves the ownership with a compare-and-set)
//	target: Resume     — let it run, confirm it runs
//	source: kill the stopped tree, forget the job
//
// A Mover that fails before the ownership moved resumes the source tree;
// the target's stopped copy is removed with Discard.
//
// A runc container job goes the same way through the container engine:
// its container is kept stopped by the checkpoint, restored stopped on
// the target as container MigratedContainerID (a new runc ID, so that two
// nodes on one machine never share runc state or a cgroup), and the
// source's stopped container is removed through runc once the target has
// the job. Docker container jobs do not migrate.

// Mover carries a stopped job's archive to another node and hands the job
// over. handed reports whether the job's ownership moved: from then on
// the source copy must never run again, even if err says the target has
// not confirmed yet.
type Mover func(ctx context.Context, j *store.Job, out Outgoing) (handed bool, err error)

// Outgoing is what a Mover carries to the target.
type Outgoing struct {
	// Archive is the checkpoint, Size its size in bytes.
	Archive string
	Size    int64
	// Pushed: the archive went to the target while it was written (the
	// destination MigrateOptions.Push gave); Archive is only its name.
	Pushed bool
	// PageServer, in a lazy migration, is the loopback address where
	// CRIU serves the job's memory on this node until the target has
	// pulled all of it; the archive then holds no memory pages.
	PageServer string
}

// MigrateOptions are the variants of MigrateOut.
type MigrateOptions struct {
	// Lazy moves the job before its memory (post-copy): see
	// docs/cluster.md, "Lazy migration".
	Lazy bool
	// Settle, in a lazy migration, is called once the job was handed
	// over and the source's page server has stopped: it reports whether
	// every page reached the target's copy (false: the target killed
	// its copy) and whether the job is this node's again (the target
	// handed it back). The source's stopped copy is killed unless the
	// job came back, in which case it runs again.
	Settle func(ctx context.Context, served error) (complete, back bool)
	// Push, if set, is called once the job is about to be checkpointed
	// in a stop-and-copy migration (process or runc container job; not
	// lazy): the archive then streams into the destination it returns
	// (to the target node) while it is written, instead of into a local
	// file that travels afterwards. name names the destination in
	// messages. An error ends the migration before anything was frozen.
	Push func(ctx context.Context, j *store.Job) (dst archive.Destination, name string, err error)
}

// MigrateOutResult describes a migration's source side.
type MigrateOutResult struct {
	// Job is the job as it was here.
	Job *store.Job
	// Size is the archive's size in bytes.
	Size int64
	// Dump is how long the checkpoint took (the tree stopped at its start).
	Dump time.Duration
	// Stopped is how long the source tree was stopped before the move
	// was decided (the job's downtime as seen from here).
	Stopped time.Duration
}

// MigrateOut checkpoints a running job keeping its tree stopped (not
// killed), and calls move. If the job was handed over, the stopped tree
// is killed and the job forgotten here (its events go with it; the
// target records its own); otherwise the tree resumes and the job runs
// here as before, and the error says why.
func (m *Manager) MigrateOut(ctx context.Context, ref string, o MigrateOptions, move Mover) (*MigrateOutResult, error) {
	j, err := m.store.GetJob(ctx, ref)
	if err != nil {
		return nil, err
	}
	if err := m.canMigrate(j); err != nil {
		return nil, err
	}
	if o.Lazy && j.Runtime != "" {
		return nil, fmt.Errorf("%w: job %s is a %s container; lazy migration moves process jobs only (migrate it without --lazy)", ErrIllegalTransition, j.Name, j.Runtime)
	}
	path, err := m.newArchivePath(j)
	if err != nil {
		return nil, err
	}
	// DumpLeaveRunning: a daemon restarted mid-migration treats the job
	// as a leave-running dump and keeps it here.
	j, err = m.transition(ctx, j.ID, "dump", Dumping, func(j *store.Job) { j.DumpLeaveRunning = true })
	if err != nil {
		return nil, err
	}
	select {
	case m.dumps <- struct{}{}:
	case <-ctx.Done():
		m.setState(j.ID, Running, "")
		return nil, ctx.Err()
	}
	var push archive.Destination // nil: a local file
	if o.Push != nil && !o.Lazy {
		dst, name, err := o.Push(ctx, j)
		if err != nil {
			<-m.dumps
			m.setState(j.ID, Running, "")
			m.event(j.ID, "migrate-failed", "migration not started (the job kept running here): %v", err)
			m.afterLeaveRunning(j)
			return nil, fmt.Errorf("migration not started: %w", err)
		}
		push, path = dst, name
	}
	start := time.Now()
	// The tree stays stopped until the move is decided: nobody else may
	// resume it meanwhile (the cluster's fencer thaws what it froze).
	m.setHeldStopped(j.ID, true)
	defer m.setHeldStopped(j.ID, false)
	res, err := m.dumpKeepStopped(ctx, j, path, push, o.Lazy)
	<-m.dumps
	if err != nil && push != nil {
		_ = push.Abort() // a dump that failed before its archive began never did
	}
	if err != nil {
		m.refreeze(j.ID) // the failed dump resumed a tree the fencer froze meanwhile
		m.setState(j.ID, Running, "")
		m.event(j.ID, "migrate-failed", "migration not started: the checkpoint failed (the job kept running here): %v", err)
		m.afterLeaveRunning(j)
		return nil, fmt.Errorf("migration not started: %w", err)
	}
	out := &MigrateOutResult{Job: j, Size: res.Size, Dump: time.Since(start)}
	m.log.Info("checkpointed for migration, tree kept stopped", "job", j.ID, "took", out.Dump, "criu", res.CRIUTime, "bytes", res.Size, "container", j.Container)
	handed, merr := move(ctx, j, Outgoing{Archive: res.Path, Size: res.Size, Pushed: push != nil, PageServer: res.pageServer()})
	if push != nil {
		res.Path = "" // nothing here to remove
	}
	out.Stopped = time.Since(start)
	if !handed && res.Lazy != nil {
		res.Lazy.Abort() // CRIU lets go of the tree before it resumes
	}
	if handed && res.Lazy != nil {
		// The target's copy runs on memory this node's CRIU still
		// serves: the stopped copy lives until the target has all of it.
		complete, back := true, false
		if o.Settle != nil {
			complete, back = o.Settle(ctx, res.Lazy.Wait())
		} else if werr := res.Lazy.Wait(); werr != nil {
			complete = false
		}
		res.Lazy.Abort()
		if back {
			rerr := res.Stopped.Resume()
			m.refreeze(j.ID)
			m.setState(j.ID, Running, "")
			_ = removeArchive(res.Path)
			m.event(j.ID, "migrate-failed", "lazy migration failed after the hand-over: the job's memory did not all reach the target, whose copy was killed; the job runs here again from the moment it was checkpointed")
			m.afterLeaveRunning(j)
			return out, errors.Join(fmt.Errorf("the job's memory did not all reach the target; the job came back and runs here again from the moment of the checkpoint"), merr, rerr)
		}
		if !complete {
			merr = errors.Join(merr, fmt.Errorf("the job's memory did not all reach the target, and the job did not come back here"))
		}
	}
	if !handed {
		rerr := res.Stopped.Resume()
		m.refreeze(j.ID) // the fencer froze it meanwhile (this node was cut off)
		m.setState(j.ID, Running, "")
		_ = removeArchive(res.Path)
		m.event(j.ID, "migrate-failed", "migration failed; the job runs here again: %v", merr)
		m.afterLeaveRunning(j)
		if rerr != nil {
			return out, errors.Join(merr, rerr)
		}
		return out, merr
	}
	// The job belongs to the target now: the stopped copy dies, by PID —
	// never through the job's cgroup, whose path the target's copy shares
	// when both nodes are on one machine — or, a container, through its
	// runtime (its own container ID: the target's copy has another).
	kerr := res.Stopped.Kill(10 * time.Second)
	m.unsupervise(j.ID)
	if err := m.store.DeleteJob(context.Background(), j.ID); err != nil {
		m.log.Error("forget a migrated job", "job", j.ID, "err", err)
	}
	_ = removeArchive(res.Path)
	_ = os.Remove(m.jobDir(j.ID)) // only if empty
	if j.Cgroup != "" {
		_ = m.cg.remove(j.Cgroup) // busy while the target's copy is in it (one machine)
	}
	m.log.Info("job migrated away", "job", j.ID, "name", j.Name)
	if kerr != nil {
		m.log.Error("kill the migrated job's stopped copy", "job", j.ID, "err", kerr)
		merr = errors.Join(merr, kerr)
	}
	return out, merr
}

// ImportSpec describes a job arriving from another node: it keeps its ID
// and name.
type ImportSpec struct {
	ID      string
	Name    string
	Cmd     []string
	Dir     string
	LogPath string
	Policy  store.Policy
	// Runtime is the container runtime of a container job ("" for a
	// process job), and Container the container ID it is restored as
	// here (see MigratedContainerID).
	Runtime   string `json:",omitempty"`
	Container string `json:",omitempty"`
	// History is the job's events on the node it comes from (kept, with
	// their times, before this node's own).
	History []store.Event `json:",omitempty"`
	// LazyPageServer, in a lazy migration, is the address (on this
	// node) that reaches the source's page server: the job is restored
	// before its memory, which follows from there (lazy.go).
	LazyPageServer string `json:",omitempty"`
}

// Import records a job that arrives from another node with its archive
// (already verified by the caller) and restores it, left stopped: the
// caller resumes it with Resume once the job is this node's, or removes
// it with Discard. A job whose ID or name is taken here is refused.
func (m *Manager) Import(ctx context.Context, spec ImportSpec, archive string, size int64) (*store.Job, error) {
	if spec.ID == "" {
		return nil, fmt.Errorf("%w: an imported job needs its ID", store.ErrInvalid)
	}
	if err := validName(spec.Name); err != nil {
		return nil, err
	}
	j := &store.Job{ID: spec.ID, Name: spec.Name, State: string(Checkpointed), Cmd: spec.Cmd, Dir: spec.Dir,
		LogPath: spec.LogPath, Policy: spec.Policy, Runtime: spec.Runtime, Container: spec.Container}
	if spec.Runtime != "" {
		if err := m.canImportContainer(spec); err != nil {
			return nil, err
		}
		j.Adopted = true // a container's init is never this daemon's child
	} else if m.cg.available() {
		j.Cgroup = m.cg.name(spec.ID)
	}
	if err := m.store.CreateJob(ctx, j); err != nil {
		return nil, fmt.Errorf("job %s cannot come here: %w", spec.Name, err)
	}
	ck := &store.Checkpoint{JobID: j.ID, State: store.CheckpointComplete, Path: archive, Size: size, CompletedAt: time.Now().UTC()}
	if _, err := m.store.Commit(ctx, j.ID, store.Change{
		Put:    []*store.Checkpoint{ck},
		Events: append(history(spec), store.Event{Type: "migrated-in", Message: fmt.Sprintf("arrived from another node with checkpoint %s (%d bytes)", ck.ID, size)}),
	}); err != nil {
		_ = m.store.DeleteJob(context.Background(), j.ID)
		return nil, err
	}
	j, err := m.restoreWith(ctx, j.ID, ck.ID, restoreOpts{migrated: true, lazyFrom: spec.LazyPageServer})
	if err != nil {
		_ = m.store.DeleteJob(context.Background(), spec.ID)
		return nil, err
	}
	if spec.LazyPageServer != "" {
		// Its archive holds no memory: not a checkpoint to restore from.
		if _, err := m.store.Commit(ctx, j.ID, store.Change{Delete: []string{ck.ID},
			Job: func(j *store.Job) error {
				if j.LastCheckpointID == ck.ID {
					j.LastCheckpointID, j.LastCheckpointAt = "", time.Time{}
				}
				return nil
			},
			Events: []store.Event{{Type: "migrated-in", Message: "restored before its memory (lazy migration); the memory follows from the source"}}}); err != nil {
			m.log.Warn("forget a lazy migration's archive", "job", j.ID, "err", err)
		}
		_ = removeArchive(archive)
	}
	if j.Runtime != "" {
		// The runtime restored it; make sure it did not let it run: the
		// source's copy may yet resume.
		if st, err := proc.ReadStat(j.PID); err != nil || (st.State != 'T' && st.State != 't') {
			state := "gone"
			if err == nil {
				state = string(st.State)
			}
			_ = m.Discard(context.Background(), j.ID)
			return nil, fmt.Errorf("job %s: its restored container %s is not stopped (PID %d, state %s); it must not run before the hand-over, so it was removed", j.Name, j.Container, j.PID, state)
		}
	}
	return j, nil
}

// Resume lets an imported job's stopped tree run and confirms that it
// runs: its root is still the same process, no longer stopped, has been
// on a CPU since it was let go and has lived minRun since; or, on a
// machine too busy to schedule it that soon, is still alive and not
// stopped after settle. A copy that the restore left broken dies the
// first time it runs, which the first condition sees; waiting the whole
// settle for every job only lengthened each migration (by 300 ms, a
// quarter of a 256 MiB one).
func (m *Manager) Resume(ctx context.Context, ref string, settle time.Duration) (*store.Job, error) {
	j, err := m.store.GetJob(ctx, ref)
	if err != nil {
		return nil, err
	}
	pids, err := proc.Tree(j.PID)
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", j.Name, err)
	}
	before := cpuNS(j.PID)
	for _, p := range pids {
		if err := syscall.Kill(p, syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
			return nil, fmt.Errorf("resume PID %d of job %s: %w", p, j.Name, err)
		}
	}
	start := time.Now()
	tick := time.NewTicker(resumePoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
		st, err := proc.ReadStat(j.PID)
		if err != nil || st.StartTime != j.StartTime || st.State == 'Z' || st.State == 'X' {
			return nil, fmt.Errorf("job %s died right after it was resumed (PID %d)", j.Name, j.PID)
		}
		stopped := st.State == 'T' || st.State == 't'
		waited := time.Since(start)
		if !stopped && waited >= minRun && cpuNS(j.PID) > before {
			break
		}
		if waited >= settle {
			if stopped {
				return nil, fmt.Errorf("job %s is still stopped after SIGCONT (PID %d)", j.Name, j.PID)
			}
			break
		}
	}
	m.event(j.ID, "migrated-in", "runs here as PID %d", j.PID)
	return j, nil
}

// How Resume watches a resumed tree: every resumePoll, for at least
// minRun once it has run.
const (
	resumePoll = 5 * time.Millisecond
	minRun     = 50 * time.Millisecond
)

// cpuNS is the CPU time all threads of pid have used, in nanoseconds (0
// if it cannot be read).
func cpuNS(pid int) uint64 {
	ts, err := proc.Threads(pid)
	if err != nil {
		return 0
	}
	var n uint64
	for _, t := range ts {
		n += t.RunNS
	}
	return n
}

// Discard ends an imported job that must not run here after all (its
// migration failed before the hand-over): its tree is killed by PID and
// the job and its archive are forgotten.
func (m *Manager) Discard(ctx context.Context, ref string) error {
	j, err := m.store.GetJob(ctx, ref)
	if err != nil {
		return err
	}
	m.unsupervise(j.ID)
	if j.Runtime != "" {
		// Its runtime kills it and forgets it (and Cedana its layer).
		if err := m.removeContainer(ctx, j); err != nil {
			m.log.Error("remove a discarded container", "job", j.ID, "container", j.Container, "err", err)
		}
	}
	if j.PID > 0 && sameProcess(j.PID, j.StartTime) {
		killTree(j.PID)
		for deadline := time.Now().Add(5 * time.Second); sameProcess(j.PID, j.StartTime) && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
	}
	cks, _ := m.store.ListCheckpoints(ctx, j.ID)
	if err := m.store.DeleteJob(ctx, j.ID); err != nil {
		return err
	}
	for _, c := range cks {
		_ = removeArchive(c.Path)
	}
	_ = os.Remove(m.jobDir(j.ID))
	m.log.Info("discarded an imported job", "job", j.ID)
	return nil
}

// ArchiveDir is the directory where a job's archives go on this node
// (created when missing): an arriving archive is written there.
func (m *Manager) ArchiveDir(jobID string) (string, error) {
	dir := m.jobDir(jobID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	return dir, nil
}

// RemovePartialArchives removes the archives a migration was receiving
// when this daemon stopped ("<job>/*.part" under the checkpoint
// directory, see internal/daemon): no migration survives a restart of
// its target, and nothing else reads them. It returns how many it
// removed.
func (m *Manager) RemovePartialArchives() int {
	parts, _ := filepath.Glob(filepath.Join(m.cfg.CheckpointDir, "*", "*.part"))
	n := 0
	for _, p := range parts {
		if os.Remove(p) == nil {
			n++
			_ = os.Remove(filepath.Dir(p)) // only if empty
		}
	}
	return n
}

// history is an arriving job's past events, renumbered by this node's
// store; each keeps its time.
func history(spec ImportSpec) []store.Event {
	out := make([]store.Event, 0, len(spec.History)+1)
	for _, e := range spec.History {
		out = append(out, store.Event{JobID: spec.ID, Time: e.Time, Type: e.Type, Message: e.Message})
	}
	return out
}

// stoppedCopy is a job's tree (or container) a migration's checkpoint
// left stopped.
type stoppedCopy interface {
	Resume() error
	Kill(wait time.Duration) error
}

// keptStopped is a migration's checkpoint: the archive, and the copy it
// left stopped.
type keptStopped struct {
	Path     string
	Size     int64
	CRIUTime time.Duration
	Stopped  stoppedCopy
	// Lazy serves the memory of a lazy migration (nil otherwise).
	Lazy pageServer
}

// pageServer is CRIU serving a lazy migration's memory
// (checkpoint.DumpResult.Lazy).
type pageServer interface {
	Address() string
	Wait() error
	Abort()
}

func (k *keptStopped) pageServer() string {
	if k.Lazy == nil {
		return ""
	}
	return k.Lazy.Address()
}

// canMigrate refuses a job that cannot migrate: a Docker container (its
// runtime kills a checkpointed container, and its image and engine are
// not Cedana's to carry), or a container job on a daemon without
// container support.
func (m *Manager) canMigrate(j *store.Job) error {
	switch {
	case j.Runtime == "":
		return nil
	case j.Runtime != container.Runc:
		return fmt.Errorf("%w: job %s is a %s container; only process jobs and runc containers migrate", ErrIllegalTransition, j.Name, j.Runtime)
	case m.containers == nil:
		return fmt.Errorf("%w: this daemon has no container support", store.ErrInvalid)
	}
	return nil
}

// dumpKeepStopped checkpoints a job for migration into path, keeping its
// tree (or its container) stopped. With push set, the archive goes there
// and path is only its name.
func (m *Manager) dumpKeepStopped(ctx context.Context, j *store.Job, path string, push archive.Destination, lazy bool) (*keptStopped, error) {
	env := []string{"CEDANA_JOB_ID=" + j.ID, "CEDANA_JOB_NAME=" + j.Name}
	if j.Runtime != "" {
		req := container.DumpRequest{Runtime: j.Runtime, Container: j.Container, Path: path, KeepStopped: true,
			Transient: true, HookEnv: env}
		if push != nil {
			req.Path, req.Destination, req.DestinationName = "", push, path
		}
		res, err := m.containers.Dump(ctx, req)
		if err != nil {
			return nil, err
		}
		if res.Stopped == nil {
			return nil, errors.New("the container engine did not keep the container stopped")
		}
		return &keptStopped{Path: res.Path, Size: res.Size, CRIUTime: res.CheckpointTime, Stopped: res.Stopped}, nil
	}
	// Transient: the archive only feeds the target's restore and is
	// removed whatever happens; fsyncing it would keep the job stopped
	// longer (the target does not fsync its copy either).
	req := checkpoint.DumpRequest{PID: j.PID, Path: path, KeepStopped: true, Lazy: lazy, Transient: true, HookEnv: env}
	if push != nil {
		req.Path, req.Destination, req.DestinationName = "", push, path
	}
	res, err := m.engine.Dump(ctx, req)
	if err != nil {
		return nil, err
	}
	if res.Stopped == nil {
		if res.Lazy != nil {
			res.Lazy.Abort()
		}
		return nil, errors.New("the engine did not keep the tree stopped")
	}
	k := &keptStopped{Path: res.Path, Size: res.Size, CRIUTime: res.CRIUTime, Stopped: res.Stopped}
	if res.Lazy != nil {
		k.Lazy = res.Lazy
	}
	return k, nil
}

// MigratedContainerID is the container ID a container job gets on node
// to when it migrates from node from: its base ID (without the suffix of
// an earlier migration to from) and "-" + to, so that on one machine the
// runtime's state and cgroup of the two copies never clash.
func MigratedContainerID(id, from, to string) string {
	base := strings.TrimSuffix(id, "-"+from)
	if base == "" {
		base = id
	}
	return base + "-" + to
}
