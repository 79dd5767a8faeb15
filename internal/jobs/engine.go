package jobs

import (
	"context"
	"os"
	"syscall"

	"github.com/cedana/cedana/internal/checkpoint"
)

// Engine is what the manager needs of the checkpoint engine
// (internal/checkpoint.Service): dump a process tree into an archive and
// restore one. Unit tests of the job lifecycle give the manager a fake
// (see fake_engine_test.go) and run without root or CRIU.
type Engine interface {
	Dump(ctx context.Context, req checkpoint.DumpRequest) (*checkpoint.DumpResult, error)
	Restore(ctx context.Context, req checkpoint.RestoreRequest) (*checkpoint.RestoreResult, error)
}

var _ Engine = (*checkpoint.Service)(nil)

// CrashpointEnv names the environment variable that makes the daemon kill
// itself with SIGKILL at a named step of a job operation. It exists for
// tests of the daemon's crash windows only (see CONTRIBUTING.md); when it
// is unset a crash point costs one string comparison.
const CrashpointEnv = "CEDANA_CRASHPOINT"

// Crash points, in the order an operation reaches them.
const (
	// CrashDumpBeforeEngine: the pending checkpoint and its final path are
	// recorded, the engine has not started.
	CrashDumpBeforeEngine = "dump-before-engine"
	// CrashAfterKillBeforeCommit: the archive is durable and the dumped
	// tree killed; the checkpoint is not yet recorded complete.
	CrashAfterKillBeforeCommit = "after-kill-before-commit"
	// CrashRestoreBeforeEngine: the job is recorded restoring (with the
	// checkpoint), CRIU has not started.
	CrashRestoreBeforeEngine = "restore-before-engine"
	// CrashRestoreAfterEngine: CRIU restored the tree; its new PID is not
	// yet recorded.
	CrashRestoreAfterEngine = "restore-after-engine"
	// CrashAutoRestoreBackoff: a failed job awaits its automatic restore.
	CrashAutoRestoreBackoff = "auto-restore-backoff"
)

// crashpoint kills the daemon at step name when CEDANA_CRASHPOINT says so,
// as `kill -9` would: no deferred function runs, nothing is flushed.
func (m *Manager) crashpoint(name string) {
	if m.crashAt == "" || m.crashAt != name {
		return
	}
	m.log.Warn("crash point reached: killing the daemon (test only)", "crashpoint", name)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is not deliverable late; never go on
}
