package jobs

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/store"
)

// TestJobCgroup: a job cedana starts runs in its own cgroup, with every
// process it forks; a restore first ends those left behind (the child of
// a killed shell), and kill ends them all. Needs root and cgroup v2.
func TestJobCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	if _, why := findCgroups(""); why != "" {
		t.Skip("no job cgroups on this machine: " + why)
	}
	ctx := context.Background()
	st, eng := store.NewMemory(), newFakeEngine(t)
	m := newTestManager(t, st, eng, Config{})
	j := runJob(t, m, "sh", store.Policy{}, "sh", "-c", "sleep 1000 & wait")
	t.Cleanup(func() { _, _ = m.cg.kill(j.Cgroup, time.Second); _ = m.cg.remove(j.Cgroup) })
	if j.Cgroup != "cedana/"+j.ID {
		t.Fatalf("job cgroup = %q", j.Cgroup)
	}
	var pids []int
	for deadline := time.Now().Add(5 * time.Second); len(pids) < 2 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		pids, _ = m.cg.procs(j.Cgroup)
	}
	if len(pids) != 2 {
		t.Fatalf("cgroup holds %v, want the shell and its child", pids)
	}
	if _, err := m.Dump(ctx, j.ID, true); err != nil {
		t.Fatal(err)
	}
	killAndWait(t, j.PID)
	waitFor(t, st, j.ID, "failed", func(j *store.Job) bool { return State(j.State) == Failed })
	if left, _ := m.cg.procs(j.Cgroup); len(left) != 1 {
		t.Fatalf("after the shell died the cgroup holds %v, want its child", left)
	}
	r, err := m.Restore(ctx, j.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	left, _ := m.cg.procs(j.Cgroup)
	if len(left) != 1 || left[0] != r.PID {
		t.Fatalf("after the restore the cgroup holds %v, want only the restored PID %d", left, r.PID)
	}
	if _, err := m.Kill(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	if left, _ := m.cg.procs(j.Cgroup); len(left) != 0 {
		t.Fatalf("kill left %v in the cgroup", left)
	}
	if _, err := m.Remove(ctx, j.ID, false, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.cg.dir(j.Cgroup)); !os.IsNotExist(err) {
		t.Errorf("rm left the cgroup %s: %v", m.cg.dir(j.Cgroup), err)
	}
}
