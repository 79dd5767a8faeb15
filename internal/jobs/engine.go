package jobs

import (
	"context"

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

// Crashpoint is crashpoint for the cluster layer's steps.
func (m *Manager) Crashpoint(name string) { m.crashpoint(name) }

// crashpoint kills the daemon at step name when a test asks for it
// (fault.Injector.Crash: binaries built with -tags faults, CEDANA_FAULT).
func (m *Manager) crashpoint(name string) {
	if m.fault.At(name) != nil {
		m.log.Warn("crash point reached: killing the daemon (test only)", "crashpoint", name)
	}
	m.fault.Crash(name)
}
