// Package fault injects failures at named steps of the checkpoint engine,
// so that tests can prove what happens when a step fails: a full disk, a
// failing fsync or rename, an image that does not reach the archive. It
// also names the daemon's crash points, where a test makes the daemon
// kill itself (Crash) to prove that a new daemon recovers its jobs.
//
// Production binaries never fail on purpose: without the build tag
// "faults", FromEnv returns a nil Injector and every At is a no-op. A
// binary built with `go build -tags faults` reads CEDANA_FAULT, a
// comma-separated list of steps (see the Step constants), and fails each
// of them with an error that wraps ErrInjected and syscall.EIO.
package fault

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Env is the environment variable a binary built with -tags faults reads.
const Env = "CEDANA_FAULT"

// Steps where a failure can be injected.
const (
	// SinkPages fails a streamed dump's memory pages image on its way
	// into the archive (before anything of it is read).
	SinkPages = "sink-pages"
	// SinkImage fails a streamed dump's other images (pagemap, core,
	// inventory…) on their way into the staging directory.
	SinkImage = "sink-image"
	// ArchiveFsync fails the fsync of the archive's temporary file.
	ArchiveFsync = "archive-fsync"
	// ArchiveRename fails the step that gives the archive its final name.
	ArchiveRename = "archive-rename"
	// AfterFreeze fails the dump right after the tree or the container
	// was frozen (CRIU or the runtime's checkpoint succeeded).
	AfterFreeze = "after-freeze"
	// ContainerResume fails the in-place restore of a container, as if
	// the runtime had refused it (Docker: once the images are in the
	// container's checkpoint directory).
	ContainerResume = "container-resume"
	// RetakeLock fails taking again a POSIX lock CRIU dropped at restore
	// (internal/checkpoint/locks.go), as if the process could not be
	// traced.
	RetakeLock = "retake-lock"
)

// Crash points of the daemon's job operations, in the order an operation
// reaches them (see Injector.Crash).
const (
	// fault.CrashDumpBeforeEngine: the pending checkpoint and its final path are
	// recorded, the engine has not started.
	CrashDumpBeforeEngine = "dump-before-engine"
	// fault.CrashAfterKillBeforeCommit: the archive is durable and the dumped
	// tree killed; the checkpoint is not yet recorded complete.
	CrashAfterKillBeforeCommit = "after-kill-before-commit"
	// fault.CrashRestoreBeforeEngine: the job is recorded restoring (with the
	// checkpoint), CRIU has not started.
	CrashRestoreBeforeEngine = "restore-before-engine"
	// fault.CrashRestoreAfterEngine: CRIU restored the tree; its new PID is not
	// yet recorded.
	CrashRestoreAfterEngine = "restore-after-engine"
	// fault.CrashAutoRestoreBackoff: a failed job awaits its automatic restore.
	CrashAutoRestoreBackoff = "auto-restore-backoff"
	// fault.CrashMigrateBeforeResume: a migration's target owns the job
	// (the hand-over happened) and holds its lease; its restored copy is
	// stopped, not yet resumed.
	CrashMigrateBeforeResume = "migrate-before-resume"
)

// ErrInjected marks an injected failure.
var ErrInjected = errors.New("injected fault")

// Injector decides whether a step fails. A nil Injector never fails.
type Injector func(step string) error

// At returns the injected error for step, or nil.
func (f Injector) At(step string) error {
	if f == nil {
		return nil
	}
	return f(step)
}

// Steps returns an Injector that fails the given steps.
func Steps(steps ...string) Injector {
	if len(steps) == 0 {
		return nil
	}
	set := map[string]bool{}
	for _, s := range steps {
		set[s] = true
	}
	return func(step string) error {
		if set[step] {
			return fmt.Errorf("%w at %s: %w", ErrInjected, step, syscall.EIO)
		}
		return nil
	}
}

// Crash kills the process with SIGKILL, as `kill -9` would (no deferred
// function runs, nothing is flushed), when step is one of the injected
// steps. It never returns then.
func (f Injector) Crash(step string) {
	if f.At(step) == nil {
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL cannot be blocked; never go on
}
