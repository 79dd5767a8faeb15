package jobs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/store"
)

// Lifecycle tests: the manager with the fake engine, real processes, an
// in-memory store, no root and no CRIU (cgroups off, so the /proc
// fallbacks are what is tested; cgroup_test.go covers cgroups as root).

func runJob(t *testing.T, m *Manager, name string, pol store.Policy, argv ...string) *store.Job {
	t.Helper()
	if len(argv) == 0 {
		argv = []string{"sleep", "1000"}
	}
	j, err := m.Run(context.Background(), RunSpec{Name: name, Cmd: argv, Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	pid := j.PID
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	return j
}

// TestAutoRestore: a job that dies under a restore-on-failure policy is
// restored from its newest checkpoint, once, and supervised again.
func TestAutoRestore(t *testing.T) {
	st, eng := store.NewMemory(), newFakeEngine(t)
	m := newTestManager(t, st, eng, Config{NoCgroups: true})
	j := runJob(t, m, "phoenix", store.Policy{RestoreOnFailure: true, MaxRestores: 2})
	if _, err := m.Dump(context.Background(), j.ID, true); err != nil {
		t.Fatal(err)
	}
	killAndWait(t, j.PID)
	got := waitFor(t, st, j.ID, "running after an automatic restore", func(j *store.Job) bool {
		return State(j.State) == Running && j.Restores == 1
	})
	if got.PID == j.PID || !sameProcess(got.PID, got.StartTime) {
		t.Fatalf("restored job has PID %d (was %d), alive=%v", got.PID, j.PID, sameProcess(got.PID, got.StartTime))
	}
	if got.RestorePending || got.RestoringFrom != "" {
		t.Errorf("restore bookkeeping left set: pending=%v from=%q", got.RestorePending, got.RestoringFrom)
	}
	if _, r := eng.counts(); r != 1 {
		t.Errorf("restores = %d, want 1", r)
	}
	// The restored process is supervised: its death is noticed too.
	killAndWait(t, got.PID)
	waitFor(t, st, j.ID, "restored a second time", func(j *store.Job) bool {
		return State(j.State) == Running && j.Restores == 2
	})
	// The limit: a third death is not restored.
	j3, _ := st.GetJob(context.Background(), j.ID)
	killAndWait(t, j3.PID)
	waitFor(t, st, j.ID, "failed for good", func(j *store.Job) bool {
		return State(j.State) == Failed && !j.RestorePending
	})
	if !hasEventType(t, st, j.ID, "gave-up") {
		t.Error("no gave-up event after max_restores")
	}
}

// TestKillDuringBackoff: `cedana kill` while an automatic restore waits
// for its backoff cancels it; the job stays killed.
func TestKillDuringBackoff(t *testing.T) {
	st, eng := store.NewMemory(), newFakeEngine(t)
	m := newTestManager(t, st, eng, Config{NoCgroups: true, RestoreBackoff: 400 * time.Millisecond})
	j := runJob(t, m, "j", store.Policy{RestoreOnFailure: true, MaxRestores: 3})
	if _, err := m.Dump(context.Background(), j.ID, true); err != nil {
		t.Fatal(err)
	}
	killAndWait(t, j.PID)
	waitFor(t, st, j.ID, "failed with a restore pending", func(j *store.Job) bool {
		return State(j.State) == Failed && j.RestorePending
	})
	if _, err := m.Kill(context.Background(), j.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(800 * time.Millisecond)
	got, _ := st.GetJob(context.Background(), j.ID)
	if _, r := eng.counts(); r != 0 || State(got.State) != Killed || got.RestorePending {
		t.Fatalf("after kill during the backoff: restores=%d state=%s pending=%v; want 0, killed, false", r, got.State, got.RestorePending)
	}
}

// TestPendingRestoreSurvivesRestart: a failed job waiting for its
// automatic restore is restored by the next daemon.
func TestPendingRestoreSurvivesRestart(t *testing.T) {
	st, eng := store.NewMemory(), newFakeEngine(t)
	dir := t.TempDir()
	m := newTestManager(t, st, eng, Config{NoCgroups: true, CheckpointDir: dir, RestoreBackoff: time.Hour})
	j := runJob(t, m, "j", store.Policy{RestoreOnFailure: true, MaxRestores: 3})
	if _, err := m.Dump(context.Background(), j.ID, true); err != nil {
		t.Fatal(err)
	}
	killAndWait(t, j.PID)
	waitFor(t, st, j.ID, "failed with a restore pending", func(j *store.Job) bool {
		return State(j.State) == Failed && j.RestorePending
	})
	m.Close() // the daemon stops during the (hour-long) backoff

	newTestManager(t, st, eng, Config{NoCgroups: true, CheckpointDir: dir})
	got := waitFor(t, st, j.ID, "restored by the next daemon", func(j *store.Job) bool { return State(j.State) == Running })
	if _, r := eng.counts(); r != 1 || got.Restores != 1 {
		t.Fatalf("restores = %d (job says %d), want 1", r, got.Restores)
	}
}

// TestRecoverInterruptedRestore: a daemon that died during a restore finds
// the restored tree (here through the archive's root PID, without
// cgroups) and adopts it instead of restoring a second copy; when no tree
// runs, the job is failed and, under its policy, restored once.
func TestRecoverInterruptedRestore(t *testing.T) {
	for _, tc := range []struct {
		name     string
		treeRuns bool
	}{{"tree runs", true}, {"no tree", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			st, eng := store.NewMemory(), newFakeEngine(t)
			dir := t.TempDir()
			restored := startSleep(t) // what CRIU brought back before the crash
			if !tc.treeRuns {
				killAndWait(t, restored)
			}
			j := &store.Job{Name: "j", State: string(Restoring), PID: 999999, StartTime: 1,
				Policy: store.Policy{RestoreOnFailure: true, MaxRestores: 3}}
			if err := st.CreateJob(ctx, j); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, j.ID, "a.zip")
			if _, _, err := writeFakeArchive(path, restored, "sleep"); err != nil {
				t.Fatal(err)
			}
			ck := &store.Checkpoint{JobID: j.ID, State: store.CheckpointComplete, Path: path}
			if err := st.PutCheckpoint(ctx, ck); err != nil {
				t.Fatal(err)
			}
			if _, err := st.UpdateJob(ctx, j.ID, func(j *store.Job) error { j.RestoringFrom = ck.ID; return nil }); err != nil {
				t.Fatal(err)
			}
			newTestManager(t, st, eng, Config{NoCgroups: true, CheckpointDir: dir})
			got := waitFor(t, st, j.ID, "running", func(j *store.Job) bool { return State(j.State) == Running })
			_, r := eng.counts()
			if tc.treeRuns && (got.PID != restored || r != 0) {
				t.Fatalf("job runs as PID %d after %d restores; want the restored tree %d, no new restore", got.PID, r, restored)
			}
			if !tc.treeRuns && r != 1 {
				t.Fatalf("restores = %d, want exactly 1", r)
			}
			if got.RestoringFrom != "" {
				t.Errorf("RestoringFrom left set: %q", got.RestoringFrom)
			}
		})
	}
}

// TestRecoverDumpAfterKill: the daemon died after the dump killed the tree
// but before it recorded the checkpoint. The archive is at the path
// recorded first, so the checkpoint is complete and the job checkpointed —
// nothing is lost. Without an archive the checkpoint is failed and a live
// process keeps running.
func TestRecoverDumpAfterKill(t *testing.T) {
	for _, tc := range []struct {
		name      string
		archive   bool
		procAlive bool
		wantJob   State
		wantCk    string
	}{
		{"archive written, tree killed", true, false, Checkpointed, store.CheckpointComplete},
		{"archive written, tree frozen", true, true, Running, store.CheckpointComplete},
		{"no archive, tree alive", false, true, Running, store.CheckpointFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			st, eng := store.NewMemory(), newFakeEngine(t)
			dir := t.TempDir()
			pid := startSleep(t)
			sst, _ := identity(pid)
			j := &store.Job{Name: "j", State: string(Dumping), PID: pid, StartTime: sst}
			if err := st.CreateJob(ctx, j); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, j.ID, "a.zip")
			if tc.archive {
				if _, _, err := writeFakeArchive(path, pid, "sleep"); err != nil {
					t.Fatal(err)
				}
			}
			if !tc.procAlive {
				killAndWait(t, pid)
			}
			ck := &store.Checkpoint{JobID: j.ID, State: store.CheckpointPending, Path: path}
			if err := st.PutCheckpoint(ctx, ck); err != nil {
				t.Fatal(err)
			}
			newTestManager(t, st, eng, Config{NoCgroups: true, CheckpointDir: dir})
			got, _ := st.GetJob(ctx, j.ID)
			c, _ := st.GetCheckpoint(ctx, ck.ID)
			if State(got.State) != tc.wantJob || c.State != tc.wantCk {
				t.Fatalf("job %s, checkpoint %s; want %s, %s", got.State, c.State, tc.wantJob, tc.wantCk)
			}
			if tc.wantCk == store.CheckpointComplete && got.LastCheckpointID != ck.ID {
				t.Errorf("LastCheckpointID = %q, want %s", got.LastCheckpointID, ck.ID)
			}
		})
	}
}

// TestLeftoversEndedBeforeRestore: a shell killed while its child runs
// leaves the child in the job's session, holding the session ID the
// restore needs. The restore ends it first (here through the session,
// without cgroups) and succeeds.
func TestLeftoversEndedBeforeRestore(t *testing.T) {
	st, eng := store.NewMemory(), newFakeEngine(t)
	m := newTestManager(t, st, eng, Config{NoCgroups: true})
	j := runJob(t, m, "sh", store.Policy{}, "sh", "-c", "sleep 1000 & wait")
	var child int
	for deadline := time.Now().Add(5 * time.Second); child == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if kids, _ := proc.Children(j.PID); len(kids) > 0 {
			child = kids[0]
		}
	}
	if child == 0 {
		t.Fatal("the shell did not start its child")
	}
	t.Cleanup(func() { _ = syscall.Kill(child, syscall.SIGKILL) })
	if _, err := m.Dump(context.Background(), j.ID, true); err != nil {
		t.Fatal(err)
	}
	killAndWait(t, j.PID)
	waitFor(t, st, j.ID, "failed", func(j *store.Job) bool { return State(j.State) == Failed })
	if _, err := identity(child); err != nil {
		t.Fatal("the child died with the shell; the test needs it alive")
	}
	if _, err := m.Restore(context.Background(), j.ID, ""); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := identity(child); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the leftover child %d still runs after the restore", child)
		}
	}
}

// TestRetention: periodic-style dumps keep the newest Keep archives and
// records; the others' records and archives are gone.
func TestRetention(t *testing.T) {
	st, eng := store.NewMemory(), newFakeEngine(t)
	m := newTestManager(t, st, eng, Config{NoCgroups: true})
	j := runJob(t, m, "j", store.Policy{Keep: 2})
	var paths []string
	for i := 0; i < 4; i++ {
		ck, err := m.Dump(context.Background(), j.ID, true)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, ck.Path)
		time.Sleep(2 * time.Millisecond) // distinct archive names
	}
	cs, _ := st.ListCheckpoints(context.Background(), j.ID)
	if len(cs) != 2 || cs[0].Path != paths[3] || cs[1].Path != paths[2] {
		t.Fatalf("kept %d checkpoints, want the newest 2", len(cs))
	}
	for i, p := range paths {
		_, err := os.Stat(p)
		if exists := err == nil; exists != (i >= 2) {
			t.Errorf("archive %d exists=%v", i, exists)
		}
	}
}

// TestDeleteCheckpointRecordFirst: when the archive cannot be removed, the
// record is gone already — never a listed checkpoint without its archive.
func TestDeleteCheckpointRecordFirst(t *testing.T) {
	ctx := context.Background()
	st, eng := store.NewMemory(), newFakeEngine(t)
	m := newTestManager(t, st, eng, Config{NoCgroups: true})
	j := &store.Job{Name: "j", State: string(Checkpointed)}
	if err := st.CreateJob(ctx, j); err != nil {
		t.Fatal(err)
	}
	stuck := filepath.Join(t.TempDir(), "stuck")
	if err := os.MkdirAll(filepath.Join(stuck, "x"), 0o700); err != nil { // os.Remove fails on it
		t.Fatal(err)
	}
	ck := &store.Checkpoint{JobID: j.ID, State: store.CheckpointComplete, Path: stuck}
	if err := st.PutCheckpoint(ctx, ck); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteCheckpoint(ctx, ck.ID); err == nil {
		t.Fatal("removing an unremovable archive reported no error")
	}
	if _, err := st.GetCheckpoint(ctx, ck.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the record survived a failed archive removal: %v", err)
	}
}

// TestRemove: rm refuses a running job unless forced, frees the name,
// keeps archives unless asked.
func TestRemove(t *testing.T) {
	ctx := context.Background()
	st, eng := store.NewMemory(), newFakeEngine(t)
	m := newTestManager(t, st, eng, Config{NoCgroups: true})
	j := runJob(t, m, "web", store.Policy{})
	ck, err := m.Dump(ctx, j.ID, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Remove(ctx, "web", false, false); !errors.Is(err, ErrIllegalTransition) {
		t.Fatalf("rm of a running job: %v, want ErrIllegalTransition", err)
	}
	res, err := m.Remove(ctx, "web", true, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := identity(j.PID); err == nil {
		// killed, maybe not yet reaped: wait a moment
		time.Sleep(100 * time.Millisecond)
		if sameProcess(j.PID, j.StartTime) {
			t.Errorf("rm -f left PID %d running", j.PID)
		}
	}
	if len(res.Kept) != 1 || res.Kept[0] != ck.Path {
		t.Errorf("kept %v, want [%s]", res.Kept, ck.Path)
	}
	if _, err := os.Stat(ck.Path); err != nil {
		t.Errorf("archive removed without --checkpoints: %v", err)
	}
	if _, err := st.GetJob(ctx, "web"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("job still listed: %v", err)
	}
	// The name is free again; --checkpoints deletes the archives.
	j2 := runJob(t, m, "web", store.Policy{})
	ck2, err := m.Dump(ctx, j2.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, st, j2.ID, "checkpointed", func(j *store.Job) bool { return State(j.State) == Checkpointed })
	res, err = m.Remove(ctx, "web", false, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ck2.Path); !errors.Is(err, os.ErrNotExist) || len(res.Removed) != 1 {
		t.Errorf("--checkpoints left %s (removed %v)", ck2.Path, res.Removed)
	}
}

// TestJobEnv: CEDANA_* never reaches a job; MPTCP is off unless the user
// chose.
func TestJobEnv(t *testing.T) {
	cases := []struct {
		in   []string
		want []string
	}{
		{[]string{"A=1", "CEDANA_TOKEN=s3cret", "CEDANA_URL=x"}, []string{"A=1", "GODEBUG=multipathtcp=0"}},
		{[]string{"GODEBUG=http2client=0"}, []string{"GODEBUG=http2client=0,multipathtcp=0"}},
		{[]string{"GODEBUG=multipathtcp=1"}, []string{"GODEBUG=multipathtcp=1"}},
		{[]string{"GODEBUG="}, []string{"GODEBUG=multipathtcp=0"}},
	}
	for _, c := range cases {
		got := JobEnv(c.in)
		if len(got) != len(c.want) {
			t.Errorf("JobEnv(%q) = %q, want %q", c.in, got, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("JobEnv(%q) = %q, want %q", c.in, got, c.want)
			}
		}
	}
}
