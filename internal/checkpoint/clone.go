package checkpoint

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/criu"
)

// CloneRequest asks for one more copy of a template: a restore from a
// directory of images already verified and unpacked (shared by every
// clone of the template, never written), into a new PID namespace.
type CloneRequest struct {
	// ImagesDir holds the verified images; Manifest is their archive's.
	ImagesDir string
	Manifest  *archive.Manifest
	// Name names the CRIU work directory (the clone's job name).
	Name string
	// NetNS is the path of the network namespace to restore into; ""
	// keeps the daemon's.
	NetNS string
	// Outputs replaces the files the template wrote its output to (by
	// path) with the clone's own log.
	Outputs map[string]*os.File
	// Lazy restores before the memory (CRIU lazy-pages).
	Lazy bool
}

// CloneResult describes a started clone.
type CloneResult struct {
	// PID is the clone's root, a child of the caller, the init of its
	// own PID namespace.
	PID int
	// CRIUTime is how long CRIU took; LogPath is its log.
	CRIUTime time.Duration
	LogPath  string
	// Lazy is the lazy-pages server still feeding the clone (nil unless
	// CloneRequest.Lazy).
	Lazy *criu.LazyServer
}

// RestoreClone starts a clone of a template. The template must have been
// dumped as the init of its own PID namespace: CRIU then restores it into
// a new one, so that any number of clones (and the original) run with the
// same PIDs without clashing.
func (s *Service) RestoreClone(ctx context.Context, req CloneRequest) (*CloneResult, error) {
	m := req.Manifest
	if err := s.CheckCompatible(m); err != nil {
		return nil, err
	}
	if !m.PIDNamespace {
		return nil, fmt.Errorf("%w: the checkpoint's tree was not the init of its own PID namespace, so clones would need its PIDs (run the service with `cedana run --pid-namespace`)", ErrInvalidInput)
	}
	if len(m.Options.ExternalTTYs) > 0 {
		return nil, fmt.Errorf("%w: the template was attached to a terminal; clones cannot share it", ErrInvalidInput)
	}
	start := time.Now()
	work, err := s.WorkDir("clone", req.Name, start)
	if err != nil {
		return nil, err
	}
	o := m.Options
	ropts := criu.RestoreOptions{
		ImagesDir:      req.ImagesDir,
		LogDir:         work,
		LogFile:        "restore.log",
		ShellJob:       o.ShellJob,
		ExtUnixSockets: o.ExtUnixSockets,
		FileLocks:      o.FileLocks,
		LinkRemap:      o.LinkRemap,
		NetworkLock:    criu.NetworkLock(o.NetworkLock),
		Detach:         true,
		JoinNetNS:      req.NetNS,
		InheritFiles:   req.Outputs,
		Lazy:           req.Lazy,
	}
	res, lazy, err := s.criu.RestoreDetached(ropts)
	if err != nil {
		return nil, fmt.Errorf("clone %s: %w", req.Name, err)
	}
	took := time.Since(start)
	s.log.Info("cloned", "name", req.Name, "pid", res.PID, "criu", took, "lazy", req.Lazy)
	return &CloneResult{PID: res.PID, CRIUTime: took, LogPath: res.LogPath, Lazy: lazy}, nil
}
