package jobs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/fault"
	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/store"
)

// errAutoCancelled means an automatic restore is no longer wanted: the job
// was killed, removed or restored by hand during the backoff.
var errAutoCancelled = errors.New("automatic restore no longer wanted")

// Restore restores a job from a checkpoint: ckptID, or the newest
// complete one.
func (m *Manager) Restore(ctx context.Context, ref, ckptID string) (*store.Job, error) {
	return m.restore(ctx, ref, ckptID, false)
}

// restore brings a job back. Its crash windows, and what a restarted
// daemon does in each (see recoverRestore and docs/state-store.md):
//
//  1. Before the first write nothing has changed.
//  2. The job is recorded restoring, with the checkpoint (RestoringFrom):
//     a restarted daemon looks for the restored tree in the job's cgroup,
//     finds none, and marks the job failed (restoring again under a
//     restore-on-failure policy).
//  3. CRIU runs, as the daemon's child: if the daemon dies, CRIU either
//     finishes (the tree runs, in the job's cgroup, where CRIU puts it
//     back) or fails and kills what it restored. The restarted daemon
//     waits for CRIU to let go of the tree, then adopts it or, if the
//     cgroup is empty, proceeds as in 2.
//  4. CRIU returned, the new PID is not recorded yet: as in 3, the tree
//     is found in the cgroup and adopted; never started a second time.
//  5. The new PID and start time are recorded: the job is running.
func (m *Manager) restore(ctx context.Context, ref, ckptID string, auto bool) (*store.Job, error) {
	return m.restoreWith(ctx, ref, ckptID, restoreOpts{auto: auto})
}

// restoreOpts are the variants of a restore.
type restoreOpts struct {
	// auto: an automatic restore (restore on failure).
	auto bool
	// migrated: the job arrives from another node (see Import): nothing
	// of it ran here, so no leftovers are looked for — on one machine
	// the source's frozen copy shares the job's cgroup path — and the
	// tree is left stopped until Resume.
	migrated bool
	// lazyFrom, with migrated, is the page server the job's memory comes
	// from (a lazy migration, see lazy.go).
	lazyFrom string
}

func (m *Manager) restoreWith(ctx context.Context, ref, ckptID string, o restoreOpts) (*store.Job, error) {
	auto := o.auto
	j, err := m.store.GetJob(ctx, ref)
	if err != nil {
		return nil, err
	}
	if !auto {
		if err := check("restore", State(j.State), j.Name); err != nil {
			return nil, err
		}
	}
	ck, err := m.pickCheckpoint(ctx, j, ckptID)
	if err != nil {
		return nil, err
	}
	j, err = m.store.UpdateJob(ctx, j.ID, func(j *store.Job) error {
		if auto && (State(j.State) != Failed || !j.RestorePending) {
			return errAutoCancelled
		}
		if err := check("restore", State(j.State), j.Name); err != nil {
			return err
		}
		j.State, j.RestoringFrom, j.RestorePending = string(Restoring), ck.ID, false
		if auto {
			j.Restores++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.unsupervise(j.ID)
	if j.Runtime == "" && !o.migrated {
		m.endLeftovers(j)
	}
	m.crashpoint(fault.CrashRestoreBeforeEngine)
	start := time.Now()
	var (
		pid         int
		containerID = j.Container
		rerr        error
		lazy        lazyLoad
	)
	if j.Runtime != "" {
		pid, containerID, rerr = m.restoreContainer(ctx, j, ck.Path, o.migrated)
	} else {
		var res *checkpoint.RestoreResult
		req := m.restoreRequest(ck.Path) // a local path or a key in the storage backend
		req.LeaveStopped = o.migrated
		req.LazyPageServer = o.lazyFrom
		req.HookEnv = []string{"CEDANA_JOB_ID=" + j.ID, "CEDANA_JOB_NAME=" + j.Name}
		res, rerr = m.engine.Restore(ctx, req)
		if rerr == nil {
			pid = res.PID
			if res.Lazy != nil {
				lazy = res.Lazy
			}
		}
	}
	if rerr != nil {
		m.restoreFailed(j.ID, ck.ID, "restore failed: "+rerr.Error(), auto)
		m.metrics.restoreFailed()
		return nil, rerr
	}
	m.crashpoint(fault.CrashRestoreAfterEngine)
	kind := "restored"
	if auto {
		kind = "auto-restored"
	}
	j, err = m.restored(j, ck.ID, pid, containerID, kind, time.Since(start), j.Runtime == "")
	if err != nil {
		if lazy != nil {
			lazy.Stop()
		}
		return nil, err
	}
	if lazy != nil {
		m.watchLazy(j, lazy)
	}
	m.metrics.restored(time.Since(start))
	return j, nil
}

// restored records a restored tree as the job's process, puts the tree
// into the job's cgroup and supervises it. child says whether the root is
// this daemon's child.
func (m *Manager) restored(j *store.Job, ckID string, pid int, containerID, kind string, took time.Duration, child bool) (*store.Job, error) {
	if j.Cgroup != "" && m.cg.available() && j.Runtime == "" {
		// CRIU put the tree back into the cgroup it was dumped in; an
		// archive made before the job had a cgroup needs moving.
		if tree, err := proc.Tree(pid); err == nil {
			if err := m.cg.enter(j.Cgroup, tree...); err != nil {
				m.log.Warn("put the restored tree into the job's cgroup", "job", j.ID, "err", err)
			}
		}
	}
	st, _ := identity(pid)
	j, err := m.store.Commit(context.Background(), j.ID, store.Change{
		Job: func(j *store.Job) error {
			j.State, j.PID, j.StartTime, j.Error, j.ExitCode = string(Running), pid, st, "", nil
			j.Container, j.RestoringFrom = containerID, ""
			return nil
		},
		Events: []store.Event{{Type: kind, Message: fmt.Sprintf("%s from checkpoint %s as PID %d%s", kind, ckID, pid, tookMsg(took))}},
	})
	if err != nil {
		return nil, err
	}
	m.log.Info("restored", "job", j.ID, "event", kind, "checkpoint", ckID, "pid", pid)
	m.supervise(j, child)
	return j, nil
}

func tookMsg(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return " in " + d.Round(time.Millisecond).String()
}

// restoreFailed records a failed (or interrupted) restore. An automatic
// one stays pending, so that the backoff loop — or a restarted daemon —
// tries again until the policy's limit.
func (m *Manager) restoreFailed(id, ckID, why string, auto bool) {
	var pending bool
	_, err := m.store.Commit(context.Background(), id, store.Change{
		Job: func(j *store.Job) error {
			j.State, j.Error, j.RestoringFrom = string(Failed), why, ""
			j.RestorePending = auto && j.Policy.RestoreOnFailure
			pending = j.RestorePending
			return nil
		},
		Events: []store.Event{{Type: "restore-failed", Message: fmt.Sprintf("restore from %s failed: %s", ckID, why)}},
	})
	if err != nil {
		m.log.Error("record failed restore", "job", id, "err", err)
		return
	}
	m.log.Info(why, "job", id, "event", "restore-failed")
	if pending {
		m.startAutoRestore(id)
	}
}

// endLeftovers ends what remains of a job's processes before it is
// restored: a restore brings the whole tree back, and a survivor (the
// `sleep` child of a shell that was killed) would run twice and hold the
// PIDs or the session ID the restore needs ("PID still in use").
func (m *Manager) endLeftovers(j *store.Job) {
	if j.Cgroup != "" && m.cg.available() {
		n, err := m.cg.kill(j.Cgroup, 5*time.Second)
		if n > 0 {
			m.event(j.ID, "leftovers-ended", "ended %d process(es) left in the job's cgroup before restoring", n)
		}
		if err == nil {
			return
		}
		m.log.Warn("end the job's leftover processes through its cgroup; trying its session", "job", j.ID, "err", err)
	}
	pids := sessionLeftovers(j)
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	if len(pids) > 0 {
		m.event(j.ID, "leftovers-ended", "ended %d process(es) left in the job's session before restoring: %v", len(pids), pids)
	}
}

// sessionLeftovers finds, without cgroups, the processes left of a job
// that cedana started: they are in the session its root created (with
// setsid), whose ID is the root's PID. That ID stays reserved while any
// member lives, so it cannot name another job's session — unless the root
// is gone, its session too, and a new session leader took the PID, which
// is checked. Adopted jobs' sessions are not theirs alone: none.
func sessionLeftovers(j *store.Job) []int {
	if j.Adopted || j.PID <= 1 {
		return nil
	}
	if st, err := proc.ReadStat(j.PID); err == nil && st.StartTime != j.StartTime && st.SID == j.PID {
		return nil // another process leads a session with that ID now
	}
	ents, err := os.ReadDir(proc.Root)
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if st, err := proc.ReadStat(pid); err == nil && st.SID == j.PID && st.State != 'Z' {
			out = append(out, pid)
		}
	}
	return out
}

// recoverRestore settles a job that a daemon crash left restoring (see
// restore for the windows): it adopts the restored tree if one runs, and
// otherwise marks the job failed — to be restored again under a
// restore-on-failure policy — so that exactly one copy ever runs.
func (m *Manager) recoverRestore(ctx context.Context, j *store.Job) {
	pid := m.findRestored(ctx, j)
	if pid > 0 {
		// Its event: "re-adopted from checkpoint C as PID P".
		if _, err := m.restored(j, j.RestoringFrom, pid, j.Container, "re-adopted", 0, false); err != nil {
			m.log.Error("re-adopt the restored tree", "job", j.ID, "pid", pid, "err", err)
		}
		return
	}
	_, err := m.store.Commit(ctx, j.ID, store.Change{
		Job: func(j *store.Job) error {
			j.State, j.RestoringFrom = string(Failed), ""
			j.Error = "the daemon stopped while the job was being restored; no restored process runs"
			j.RestorePending = j.Policy.RestoreOnFailure
			return nil
		},
		Events: []store.Event{{Type: "failed", Message: "the daemon stopped during a restore from " + j.RestoringFrom + "; no restored process runs"}},
	})
	if err != nil {
		m.log.Error("record interrupted restore", "job", j.ID, "err", err)
		return
	}
	if j.Policy.RestoreOnFailure {
		m.startAutoRestore(j.ID)
	}
}

// findRestored returns the root of a tree restored for j by an earlier
// daemon, or 0. With a cgroup: the process in it whose parent is not,
// once no process there is traced any more (a CRIU that outlived the
// daemon may still be finishing, or undoing, the restore). Without: the
// archive's root PID (kept by a restore without a PID namespace) if a
// process with a new start time and the archived name holds it.
func (m *Manager) findRestored(ctx context.Context, j *store.Job) int {
	if j.Runtime != "" {
		if j2, err := m.refreshContainer(ctx, j); err == nil && j2.StartTime != j.StartTime {
			return j2.PID
		}
		return 0
	}
	if j.Cgroup != "" && m.cg.available() {
		for deadline := time.Now().Add(10 * time.Second); ; {
			pids, err := m.cg.procs(j.Cgroup)
			if err != nil {
				break
			}
			// CRIU still at work: tasks traced, or an orphaned CRIU (its
			// daemon died) still running.
			busy := orphanedCRIU()
			for _, p := range pids {
				if tracerOf(p) != 0 {
					busy = true
				}
			}
			if !busy || time.Now().After(deadline) {
				return treeRoot(pids)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	c, err := m.store.GetCheckpoint(ctx, j.RestoringFrom)
	if err != nil {
		return 0
	}
	mf, _, err := m.readManifest(c.Path)
	if err != nil {
		return 0
	}
	if mf.PIDNamespace || len(mf.Processes) == 0 {
		return 0
	}
	st, err := proc.ReadStat(mf.RootPID)
	if err != nil || st.State == 'Z' || (mf.RootPID == j.PID && st.StartTime == j.StartTime) || st.Comm != mf.Processes[0].Name {
		return 0
	}
	return mf.RootPID
}

// orphanedCRIU reports whether a CRIU restore whose parent died (a
// daemon killed mid-restore) is still running.
func orphanedCRIU() bool {
	ents, err := os.ReadDir(proc.Root)
	if err != nil {
		return false
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := proc.ReadStat(pid)
		if err != nil || (st.PPID != 1 && proc.Exists(st.PPID)) {
			continue
		}
		args := proc.Cmdline(pid)
		isCRIU, restoring := false, false
		for _, a := range args {
			switch {
			case filepath.Base(a) == "criu":
				isCRIU = true
			case a == "swrk" || a == "restore":
				restoring = true
			}
		}
		if isCRIU && restoring {
			return true
		}
	}
	return false
}

// treeRoot returns the oldest process of pids whose parent is not among
// them, or 0.
func treeRoot(pids []int) int {
	in := map[int]bool{}
	for _, p := range pids {
		in[p] = true
	}
	root, oldest := 0, uint64(0)
	for _, p := range pids {
		st, err := proc.ReadStat(p)
		if err != nil || st.State == 'Z' || in[st.PPID] {
			continue
		}
		if root == 0 || st.StartTime < oldest {
			root, oldest = p, st.StartTime
		}
	}
	return root
}

// tracerOf returns the PID tracing pid (TracerPid in /proc/PID/status).
func tracerOf(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("%s/%d/status", proc.Root, pid))
	if err != nil {
		return 0
	}
	_, rest, ok := strings.Cut(string(data), "\nTracerPid:")
	if !ok {
		return 0
	}
	line, _, _ := strings.Cut(rest, "\n")
	n, _ := strconv.Atoi(strings.TrimSpace(line))
	return n
}
