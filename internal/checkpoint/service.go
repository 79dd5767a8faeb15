// Package checkpoint is Cedana's engine: it turns "checkpoint this process
// tree into an archive" and "bring this archive back" into the right CRIU
// calls, staging, archive writing and verification.
//
// The standalone client and the daemon both call a *Service; neither has a
// dump or restore path of its own.
package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/fault"
)

// Version is the cedana version recorded in archives. It is set at build
// time by the linker (-X); see the Makefile.
var Version = "dev"

// Errors callers may branch on (the CLI maps them to exit codes).
var (
	// ErrInvalidInput is a request that can never succeed as given.
	ErrInvalidInput = errors.New("invalid input")
	// ErrPIDBusy means a PID the restore needs is still taken.
	ErrPIDBusy = errors.New("PID still in use")
)

// Progress receives progress reports of long steps. Implementations must
// be cheap; they are called from the data path.
type Progress interface {
	// Start begins a step that will process total bytes (0 if unknown).
	Start(step string, total int64)
	// Advance reports the bytes processed so far in the current step.
	Advance(done int64)
	// Done ends the current step.
	Done()
}

// NoProgress is a Progress that reports nothing.
type NoProgress struct{}

// Start does nothing.
func (NoProgress) Start(string, int64) {}

// Advance does nothing.
func (NoProgress) Advance(int64) {}

// Done does nothing.
func (NoProgress) Done() {}

// Settings are the engine's defaults, usually from the configuration.
type Settings struct {
	// CRIUPath is the criu binary ("" = PATH).
	CRIUPath string
	// LogDir receives CRIU logs.
	LogDir string
	// StagingDir holds images while an archive is written or read; ""
	// chooses /dev/shm when it has room, else the archive's directory.
	StagingDir string
	// NetworkLock is the default network lock method.
	NetworkLock criu.NetworkLock
	// GhostLimit is the default ghost file limit (0 = CRIU's default).
	GhostLimit uint64
	// CarryFileMax and CarryTotalMax bound the files carried in archives.
	CarryFileMax  int64
	CarryTotalMax int64
	// PIDWait is how long a restore waits for old PIDs to be released.
	PIDWait time.Duration
	// Hooks are user scripts run around dumps and restores.
	Hooks Hooks
	// Stream moves memory pages between CRIU and the archive through
	// pipes (criu --stream) instead of staging them as files.
	Stream bool
	// KeepLogs is how many operations' work directories (CRIU logs) are
	// kept in LogDir, newest first; 0 keeps them all.
	KeepLogs int
	// MaxLogAge removes work directories older than this; 0 never does.
	MaxLogAge time.Duration
}

// Service runs dumps and restores. It is safe for concurrent use.
type Service struct {
	criu *criu.Client
	set  Settings
	log  *slog.Logger
	// fault injects failures for tests (nil in production builds).
	fault fault.Injector

	// pruneMu guards lastPrune, when the log directory was last pruned
	// (workdir.go).
	pruneMu   sync.Mutex
	lastPrune time.Time
}

// NewService returns a Service. A nil logger discards logs.
func NewService(s Settings, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.PIDWait == 0 {
		s.PIDWait = 10 * time.Second
	}
	return &Service{criu: criu.New(s.CRIUPath), set: s, log: log, fault: fault.FromEnv()}
}

// CRIU returns the CRIU client the service uses.
func (s *Service) CRIU() *criu.Client { return s.criu }

// RunHook runs the configured hook called name ("pre-dump", "post-dump",
// "pre-restore" or "post-restore") for an operation on pid and archive.
// Other engines (containers) call it so that they run the same hooks as
// processes.
func (s *Service) RunHook(ctx context.Context, name string, pid int, archive string, env []string) error {
	var script string
	switch name {
	case "pre-dump":
		script = s.set.Hooks.PreDump
	case "post-dump":
		script = s.set.Hooks.PostDump
	case "pre-restore":
		script = s.set.Hooks.PreRestore
	case "post-restore":
		script = s.set.Hooks.PostRestore
	default:
		return fmt.Errorf("unknown hook %q", name)
	}
	return runHook(ctx, name, script, pid, archive, env)
}

// Fault returns the service's fault injector (nil in production
// builds), for engines built on it.
func (s *Service) Fault() fault.Injector { return s.fault }
