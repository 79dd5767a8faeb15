// Package container checkpoints and restores containers — Docker
// containers through the engine's HTTP API, OCI containers run directly
// with runc — into the same portable, verified archives as processes.
//
// A container archive holds, besides CRIU's images:
//
//	container/config.json      the runtime's configuration of the container
//	                           (Docker: the engine's inspect document;
//	                           runc: the bundle's config.json)
//	container/rootfs-diff.tar  the changes to its writable layer, as an OCI
//	                           layer changeset (whiteouts for deletions)
//
// and the manifest's Container section says which runtime, container and
// image it came from. A restore recreates the container from the same
// image (Docker) or base rootfs (runc), puts the changes back into a fresh
// writable layer and lets the runtime restore the processes, possibly
// under a new name: a clone.
//
// The dump keeps the guarantee of process checkpoints: the container is
// stopped only by the runtime's own checkpoint, and if anything fails
// before the archive is durable the container is restored in place from
// the images just taken.
package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/fault"
)

// Runtime names, as in the manifest's Kind and Container.Runtime.
const (
	Docker = "docker"
	Runc   = "runc"
)

// Entry names below archive.ContainerPrefix.
const (
	configEntry = "config.json"
	layerEntry  = "rootfs-diff.tar"
)

// Errors callers may branch on. Bad requests wrap checkpoint.ErrInvalidInput,
// so that the CLI maps them to the same exit code as for processes.
var (
	// ErrUnavailable means the container runtime itself is missing or not
	// reachable (no runc binary, no Docker engine, no checkpoint support).
	ErrUnavailable = errors.New("container runtime unavailable")
)

// invalid wraps checkpoint.ErrInvalidInput with a message.
func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", checkpoint.ErrInvalidInput, fmt.Sprintf(format, a...))
}

// Settings are the container engine's defaults, usually from the
// configuration and global flags.
type Settings struct {
	// CRIUPath is the criu binary ("" = PATH). runc is told to use it;
	// Docker's runc finds criu on the engine's PATH.
	CRIUPath string
	// LogDir receives CRIU's logs (runc's work directories).
	LogDir string
	// StagingDir holds images while an archive is written or read; ""
	// chooses per runtime (Docker: under the engine's data root, so that
	// images can be moved into a container without a copy).
	StagingDir string
	// NetworkLock is how CRIU locks the network of a runc container.
	NetworkLock criu.NetworkLock
	// RuncBinary is the runc executable ("" = runc on PATH).
	RuncBinary string
	// RuncRoot is runc's state directory ("" = runc's default, /run/runc).
	RuncRoot string
	// StateDir keeps what Cedana needs for the runc containers it runs:
	// their writable layers, derived bundles and logs, one directory per
	// container.
	StateDir string
	// DockerHost is the engine's address, "unix:///path" or "tcp://h:p"
	// ("" = $DOCKER_HOST, else unix:///var/run/docker.sock).
	DockerHost string
	// Engine is the process engine whose archive paths, staging and work
	// directories, compatibility checks and hooks containers share. nil
	// builds one from CRIUPath, LogDir, StagingDir and NetworkLock (and
	// then no hooks run).
	Engine *checkpoint.Service
}

// Service checkpoints and restores containers. It is safe for concurrent
// use on different containers.
type Service struct {
	set  Settings
	log  *slog.Logger
	eng  *checkpoint.Service
	criu *criu.Client
	// fault injects failures for tests (nil in production builds).
	fault fault.Injector
	// newDriver, if set, replaces the real runtimes (tests).
	newDriver func(runtime string) (driver, error)
}

// NewService returns a Service. A nil logger discards logs.
func NewService(s Settings, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.StateDir == "" {
		s.StateDir = "/var/lib/cedana/runc"
	}
	eng := s.Engine
	if eng == nil {
		eng = checkpoint.NewService(checkpoint.Settings{CRIUPath: s.CRIUPath, LogDir: s.LogDir,
			StagingDir: s.StagingDir, NetworkLock: s.NetworkLock}, log)
	}
	return &Service{set: s, log: log, eng: eng, criu: eng.CRIU(), fault: eng.Fault()}
}

// driver is what each runtime provides to the shared dump and restore
// flows.
type driver interface {
	// name is the runtime's name and the archive kind.
	name() string
	// lookup finds a running container by ID or name and describes it.
	lookup(ctx context.Context, id string) (*target, error)
	// stagingParent is where this runtime's staging directories go when
	// none is configured ("" = next to the archive, or /dev/shm).
	stagingParent(ctx context.Context) (string, error)
	// checkpoint makes the runtime write CRIU images of t into imagesDir
	// (which does not exist yet) and stop the container.
	checkpoint(ctx context.Context, t *target, imagesDir string, o criuOptions) error
	// resume restores t in place from imagesDir, after a failed archive
	// write or for --leave-running.
	resume(ctx context.Context, t *target, imagesDir string, o criuOptions) error
	// finish cleans up after a checkpoint whose archive is written and
	// whose container stays stopped.
	finish(t *target)
	// restore recreates a container from an extracted archive in dir.
	// With src, the images are served from it (the memory pages from
	// the archive, not extracted): only a memoryStreamer gets one.
	restore(ctx context.Context, m *archive.Manifest, dir string, req RestoreRequest, src criu.ImageSource) (*RestoreResult, error)
	// optionHint tells a user how to give CRIU an option (e.g.
	// "tcp-established") for this runtime, for error messages.
	optionHint(opt string) string
}

// target is a running container about to be checkpointed.
type target struct {
	info archive.ContainerInfo
	// pid is the container's init as seen from the host.
	pid int
	// config is the runtime configuration that travels in the archive.
	config []byte
	// writeLayer writes the container's writable layer as a changeset;
	// it is called once the container is stopped.
	writeLayer func(w io.Writer) (LayerStats, error)
	// extra are further entries for the archive, by name below
	// archive.ContainerPrefix.
	extra map[string][]byte
	// notes explain choices (e.g. how the writable layer was found).
	notes []string
	// priv is the driver's own data.
	priv any
}

// criuOptions are the CRIU choices a container checkpoint passes on.
type criuOptions struct {
	TCPEstablished bool
	ExtUnixSockets bool
	FileLocks      bool
	NetworkLock    criu.NetworkLock
	// WorkDir receives CRIU's logs (runc).
	WorkDir string
	// LeaveStopped leaves a restored tree stopped (runc restore only).
	LeaveStopped bool
}

func (s *Service) driver(runtimeName string) (driver, error) {
	if s.newDriver != nil {
		return s.newDriver(runtimeName)
	}
	switch runtimeName {
	case Docker:
		return newDockerDriver(s)
	case Runc:
		return newRuncDriver(s)
	}
	return nil, invalid("unknown container runtime %q (want docker or runc)", runtimeName)
}

// RestoreRequest asks to bring a container back from an archive.
type RestoreRequest struct {
	// Path is the archive; it is only read.
	Path string
	// Runtime is the runtime the caller expects ("docker" or "runc"); an
	// archive of another kind is refused with the command that fits it.
	Runtime string
	// Name is the new container's name (Docker) or ID (runc); "" keeps
	// the original. A new name while the original exists makes a clone.
	Name string
	// Bundle is the runc bundle whose rootfs is the base of the restored
	// container ("" = the bundle recorded at dump time).
	Bundle string
	// LeaveStopped leaves the restored container's processes stopped:
	// the caller resumes them (SIGCONT) or removes the container with
	// Service.Remove (a migration's target). runc only.
	LeaveStopped bool
	// Migration says the restore is a migration's target: errors advise
	// what to set up on this node, not restore flags.
	Migration bool
	// Progress, if set, receives progress reports.
	Progress checkpoint.Progress
	// HookEnv is added to the environment of hook scripts.
	HookEnv []string
}

// RestoreResult describes a restored container.
type RestoreResult struct {
	// ID and Name of the restored container (for runc both are the ID).
	ID, Name string
	// PID is the container's init as seen from the host.
	PID int
	// Created is true when the container was created anew (Docker).
	Created  bool
	Manifest *archive.Manifest
	// Notes report what a user should know (a changed address...).
	Notes []string
	// Timings: verify+extract, recreate (container and layer), the
	// runtime's restore, and the whole.
	ExtractTime, PrepareTime, RestoreTime, Total time.Duration
	// Warnings are problems that did not fail the restore (a post-restore
	// hook).
	Warnings []string
}

// Restore verifies an archive and restores its container.
func (s *Service) Restore(ctx context.Context, req RestoreRequest) (*RestoreResult, error) {
	start := time.Now()
	prog := req.Progress
	if prog == nil {
		prog = checkpoint.NoProgress{}
	}
	r, err := archive.Open(req.Path, archive.DefaultLimits())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", req.Path, err)
	}
	defer r.Close()
	m := r.Manifest
	if err := checkKind(m, req.Runtime, req.Path); err != nil {
		return nil, err
	}
	if req.LeaveStopped && req.Runtime != Runc {
		return nil, invalid("a %s container cannot be restored stopped (only runc containers can)", req.Runtime)
	}
	if err := s.eng.CheckCompatible(m); err != nil {
		return nil, err
	}
	d, err := s.driver(req.Runtime)
	if err != nil {
		return nil, err
	}
	preferred, err := d.stagingParent(ctx)
	if err != nil {
		return nil, err
	}
	// Streamed (runc, large memory): the memory pages go from the
	// archive into CRIU, verified on the way, as a process's; every other
	// entry is extracted and verified first.
	_, streams := d.(memoryStreamer)
	streams = streams && s.eng.StreamsRestore(m)
	staging, err := s.eng.Stage(r, streams, preferred, filepath.Dir(req.Path), req.Path, prog)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(staging)
	extractTime := time.Since(start)
	if err := s.eng.RunHook(ctx, "pre-restore", m.RootPID, req.Path, req.HookEnv); err != nil {
		return nil, fmt.Errorf("restore not started: %w", err)
	}
	prog.Start("restoring", 0)
	var src criu.ImageSource
	if streams {
		src = checkpoint.ArchiveImages(r, filepath.Join(staging, "images"))
	}
	s.log.Info("restoring container", "runtime", d.name(), "archive", req.Path, "staging", staging, "stream", streams)
	res, err := d.restore(ctx, m, staging, req, src)
	prog.Done()
	if err != nil {
		return nil, err
	}
	res.Manifest, res.ExtractTime, res.Total = m, extractTime, time.Since(start)
	if err := s.eng.RunHook(ctx, "post-restore", res.PID, req.Path, req.HookEnv); err != nil {
		res.Warnings = append(res.Warnings, err.Error())
	}
	return res, nil
}

// checkKind refuses an archive of another kind, naming the command that
// restores it.
func checkKind(m *archive.Manifest, want, path string) error {
	if m.Kind == want && m.Container != nil && m.Container.Runtime == want {
		return nil
	}
	switch m.Kind {
	case archive.KindProcess:
		return invalid("%s is a checkpoint of a process (%s), not of a %s container; restore it with `cedana client restore %s`",
			path, processName(m), want, path)
	case Docker, Runc:
		return invalid("%s is a checkpoint of a %s container, not of a %s one; restore it with `cedana restore %s %s`",
			path, m.Kind, want, m.Kind, path)
	}
	return invalid("%s holds a checkpoint of kind %q, which this cedana cannot restore as a %s container", path, m.Kind, want)
}

func processName(m *archive.Manifest) string {
	if len(m.Processes) > 0 {
		return m.Processes[0].Name
	}
	return "?"
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
