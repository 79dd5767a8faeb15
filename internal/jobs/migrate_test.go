package jobs

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/container"
	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/store"
)

func TestMigratedContainerID(t *testing.T) {
	for _, c := range []struct{ id, from, to, want string }{
		{"mig", "a", "b", "mig-b"},
		{"mig-b", "b", "a", "mig-a"}, // back: never <id>-b-a
		{"mig-a", "b", "c", "mig-a-c"},
		{"-a", "a", "b", "-a-b"},
	} {
		if got := MigratedContainerID(c.id, c.from, c.to); got != c.want {
			t.Errorf("MigratedContainerID(%q, %q, %q) = %q, want %q", c.id, c.from, c.to, got, c.want)
		}
	}
}

func TestCanMigrate(t *testing.T) {
	m := &Manager{}
	if err := m.canMigrate(&store.Job{Name: "p"}); err != nil {
		t.Errorf("a process job: %v", err)
	}
	if err := m.canMigrate(&store.Job{Name: "d", Runtime: "docker", Container: "x"}); !errors.Is(err, ErrIllegalTransition) {
		t.Errorf("a Docker container job: %v; want ErrIllegalTransition", err)
	}
	if err := m.canMigrate(&store.Job{Name: "r", Runtime: "runc", Container: "x"}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("a runc container job without container support: %v; want ErrInvalid", err)
	}
	if err := m.canImportContainer(ImportSpec{Name: "r", Runtime: "runc"}); err == nil {
		t.Error("a runc container job arriving without a container ID was accepted")
	}
}

// fakeContainers stands in for the container engine: a restore starts a
// real `sleep` and records what it was asked; Remove records its call.
type fakeContainers struct {
	t        *testing.T
	restores []container.RestoreRequest
	removed  []string
	pid      int
	// running: the restore lets the container run even when asked to
	// leave it stopped.
	running bool
}

func (f *fakeContainers) Lookup(context.Context, string, string) (*container.Running, error) {
	return nil, errors.New("not in this test")
}

func (f *fakeContainers) Dump(context.Context, container.DumpRequest) (*container.DumpResult, error) {
	return nil, errors.New("not in this test")
}

func (f *fakeContainers) Restore(_ context.Context, req container.RestoreRequest) (*container.RestoreResult, error) {
	f.restores = append(f.restores, req)
	f.pid = startSleep(f.t)
	if req.LeaveStopped && !f.running {
		_ = syscall.Kill(f.pid, syscall.SIGSTOP)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if st, err := proc.ReadStat(f.pid); err == nil && st.State == 'T' {
				break
			}
		}
	}
	return &container.RestoreResult{ID: req.Name, Name: req.Name, PID: f.pid}, nil
}

func (f *fakeContainers) Remove(_ context.Context, runtime, id string) error {
	f.removed = append(f.removed, runtime+"/"+id)
	return syscall.Kill(f.pid, syscall.SIGKILL)
}

// An arriving runc container job is restored stopped under the container
// ID it gets here; a discarded one is removed through its runtime.
func TestImportContainerDiscard(t *testing.T) {
	st := store.NewMemory()
	fc := &fakeContainers{t: t}
	m := New(Config{CheckpointDir: filepath.Join(t.TempDir(), "ckpt"), LogDir: t.TempDir(), NoCgroups: true},
		st, newFakeEngine(t), fc, nil, nil)
	t.Cleanup(m.Close)
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "a.cedana")
	if err := os.WriteFile(archive, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	j, err := m.Import(context.Background(), ImportSpec{ID: "job-1", Name: "ctr", Runtime: "runc", Container: "mig-b"}, archive, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(fc.restores) != 1 || fc.restores[0].Name != "mig-b" || !fc.restores[0].LeaveStopped || fc.restores[0].Runtime != "runc" || !fc.restores[0].Migration {
		t.Fatalf("restore requests: %+v; want one of runc container mig-b, left stopped", fc.restores)
	}
	if j.Container != "mig-b" || j.Runtime != "runc" || j.PID != fc.pid || State(j.State) != Running {
		t.Fatalf("imported job: %+v", j)
	}
	if err := m.Discard(context.Background(), "ctr"); err != nil {
		t.Fatal(err)
	}
	if len(fc.removed) != 1 || fc.removed[0] != "runc/mig-b" {
		t.Fatalf("removed: %v; want runc/mig-b", fc.removed)
	}
	if _, err := st.GetJob(context.Background(), "job-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the discarded job is still known: %v", err)
	}

	// A runtime that let the restored container run: refused, removed.
	fc.running, fc.removed = true, nil
	if err := os.WriteFile(archive, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = m.Import(context.Background(), ImportSpec{ID: "job-2", Name: "ctr2", Runtime: "runc", Container: "c2-b"}, archive, 1)
	if err == nil || !strings.Contains(err.Error(), "not stopped") {
		t.Fatalf("import of a container restored running: %v; want a refusal saying it is not stopped", err)
	}
	if len(fc.removed) != 1 || fc.removed[0] != "runc/c2-b" {
		t.Fatalf("removed: %v; want runc/c2-b", fc.removed)
	}
	if _, err := st.GetJob(context.Background(), "job-2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the refused job is still known: %v", err)
	}
}

// TestResumeConfirmsTheCopyRuns: Resume lets a stopped tree go and says
// it runs as soon as it has run and lived a little — not after the whole
// settle — and says so plainly when the copy dies on its first run.
func TestResumeConfirmsTheCopyRuns(t *testing.T) {
	st := store.NewMemory()
	m := New(Config{CheckpointDir: filepath.Join(t.TempDir(), "ckpt"), LogDir: t.TempDir(), NoCgroups: true},
		st, newFakeEngine(t), nil, nil, nil)
	t.Cleanup(m.Close)
	ctx := context.Background()
	// stopped starts sh with script, which stops itself first as a
	// restored copy waits for its hand-over.
	stopped := func(id, script string) *store.Job {
		t.Helper()
		cmd := exec.Command("sh", "-c", "kill -STOP $$; "+script)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid := cmd.Process.Pid
		reaped := make(chan struct{})
		go func() { _ = cmd.Wait(); close(reaped) }() // reap it when it dies, as the daemon does
		t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL); <-reaped })
		var s *proc.Stat
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			var err error
			if s, err = proc.ReadStat(pid); err == nil && s.State == 'T' {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("PID %d never stopped itself", pid)
			}
		}
		j := &store.Job{ID: id, Name: id, PID: pid, StartTime: s.StartTime, State: string(Running)}
		if err := st.CreateJob(ctx, j); err != nil {
			t.Fatal(err)
		}
		return j
	}

	stopped("healthy", "while :; do sleep 0.01; done")
	settle := 2 * time.Second
	t0 := time.Now()
	if _, err := m.Resume(ctx, "healthy", settle); err != nil {
		t.Fatalf("resume a healthy copy: %v", err)
	}
	if took := time.Since(t0); took < minRun || took > settle/2 {
		t.Errorf("resume confirmed after %v; want it soon after the copy ran (≥ %v, well under the %v settle)", took, minRun, settle)
	}

	stopped("broken", "exit 3")
	if _, err := m.Resume(ctx, "broken", settle); err == nil || !strings.Contains(err.Error(), "died right after it was resumed") {
		t.Fatalf("resume of a copy that dies on its first run: %v; want it reported dead", err)
	}
}
