package jobs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/store"
)

// fakeEngine stands in for the checkpoint engine in lifecycle tests: a
// dump writes a real (tiny) archive describing the tree and, unless asked
// to leave it running, kills the tree, as CRIU does; a restore starts a
// fresh `sleep` in its own session, a real process the manager supervises.
// No root and no CRIU are needed.
type fakeEngine struct {
	t *testing.T

	mu          sync.Mutex
	dumps       int
	restores    int
	failRestore error // returned by Restore when set
	pids        []int // restored processes, killed at cleanup
}

var _ Engine = (*fakeEngine)(nil)

func newFakeEngine(t *testing.T) *fakeEngine {
	f := &fakeEngine{t: t}
	t.Cleanup(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, p := range f.pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	})
	return f
}

func (f *fakeEngine) Dump(_ context.Context, req checkpoint.DumpRequest) (*checkpoint.DumpResult, error) {
	st, err := proc.ReadStat(req.PID)
	if err != nil {
		return nil, fmt.Errorf("%w: no process with PID %d", checkpoint.ErrInvalidInput, req.PID)
	}
	m, size, err := writeFakeArchive(req.Path, req.PID, st.Comm)
	if err != nil {
		return nil, err
	}
	if !req.LeaveRunning {
		_ = syscall.Kill(req.PID, syscall.SIGKILL)
	}
	f.mu.Lock()
	f.dumps++
	f.mu.Unlock()
	return &checkpoint.DumpResult{Path: req.Path, Size: size, Manifest: m}, nil
}

func (f *fakeEngine) Restore(_ context.Context, req checkpoint.RestoreRequest) (*checkpoint.RestoreResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := os.Stat(req.Path); err != nil {
		return nil, fmt.Errorf("restore %s: %w", req.Path, err)
	}
	if f.failRestore != nil {
		return nil, f.failRestore
	}
	pid := startSleep(f.t)
	f.restores++
	f.pids = append(f.pids, pid)
	return &checkpoint.RestoreResult{PID: pid}, nil
}

func (f *fakeEngine) counts() (dumps, restores int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dumps, f.restores
}

// writeFakeArchive writes a valid archive with one small image whose
// manifest names rootPID (called comm) as the root.
func writeFakeArchive(path string, rootPID int, comm string) (*archive.Manifest, int64, error) {
	images, err := os.MkdirTemp("", "fake-images-")
	if err != nil {
		return nil, 0, err
	}
	defer os.RemoveAll(images)
	if err := os.WriteFile(filepath.Join(images, "core-1.img"), []byte("fake"), 0o600); err != nil {
		return nil, 0, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, 0, err
	}
	m := &archive.Manifest{Kind: archive.KindProcess, Created: time.Now().UTC(), RootPID: rootPID,
		Processes: []archive.Process{{PID: rootPID, Name: comm}}}
	return archive.Create(path, m, images, nil, archive.WriteOptions{})
}

// startSleep starts `sleep 1000` in its own session, as a child of the
// test (so that the manager can reap it), and kills it at cleanup.
func startSleep(t *testing.T) int {
	t.Helper()
	path, err := resolveCommand("sleep", "/", nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := os.StartProcess(path, []string{"sleep", "1000"}, &os.ProcAttr{
		Files: []*os.File{nil, nil, nil}, Sys: &syscall.SysProcAttr{Setsid: true}})
	if err != nil {
		t.Fatal(err)
	}
	pid := p.Pid
	_ = p.Release()
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

// newTestManager returns a started manager on st with the fake engine.
func newTestManager(t *testing.T, st store.Store, eng Engine, cfg Config) *Manager {
	t.Helper()
	if cfg.CheckpointDir == "" {
		cfg.CheckpointDir = filepath.Join(t.TempDir(), "ckpt")
	}
	if cfg.LogDir == "" {
		cfg.LogDir = filepath.Join(t.TempDir(), "logs")
	}
	if cfg.RestoreBackoff == 0 {
		cfg.RestoreBackoff = 20 * time.Millisecond
	}
	m := New(cfg, st, eng, nil, nil, nil)
	t.Cleanup(m.Close)
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return m
}

// waitFor polls the job until cond holds.
func waitFor(t *testing.T, st store.Store, id string, what string, cond func(*store.Job) bool) *store.Job {
	t.Helper()
	var j *store.Job
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var err error
		if j, err = st.GetJob(context.Background(), id); err == nil && cond(j) {
			return j
		}
	}
	t.Fatalf("job never got %s: %+v", what, j)
	return nil
}

// killAndWait SIGKILLs pid and waits until it is no longer running.
func killAndWait(t *testing.T, pid int) {
	t.Helper()
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if _, err := identity(pid); err != nil {
			return
		}
	}
	t.Fatalf("PID %d did not die", pid)
}

func hasEventType(t *testing.T, st store.Store, id, typ string) bool {
	t.Helper()
	es, err := st.ListEvents(context.Background(), id, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.Type == typ {
			return true
		}
	}
	return false
}

var errFakeRestore = errors.New("fake restore failure")
