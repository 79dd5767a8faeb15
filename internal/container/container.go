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
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/criu"
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
}

// Service checkpoints and restores containers. It is safe for concurrent
// use on different containers.
type Service struct {
	set  Settings
	log  *slog.Logger
	criu *criu.Client
}

// NewService returns a Service. A nil logger discards logs.
func NewService(s Settings, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.StateDir == "" {
		s.StateDir = "/var/lib/cedana/runc"
	}
	return &Service{set: s, log: log, criu: criu.New(s.CRIUPath)}
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
	restore(ctx context.Context, m *archive.Manifest, dir string, req RestoreRequest) (*RestoreResult, error)
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
}

func (s *Service) driver(ctx context.Context, runtimeName string) (driver, error) {
	switch runtimeName {
	case Docker:
		return newDockerDriver(s)
	case Runc:
		return newRuncDriver(s)
	}
	return nil, invalid("unknown container runtime %q (want docker or runc)", runtimeName)
}

// DumpRequest asks for a checkpoint of a running container.
type DumpRequest struct {
	// Runtime is "docker" or "runc".
	Runtime string
	// Container is the container's ID (or, for Docker, its name).
	Container string
	// Dir receives the archive (created 0700 if missing); Path, if set, is
	// the exact archive path.
	Dir, Path string
	// LeaveRunning restores the container in place once the archive is
	// written, so that it goes on running.
	LeaveRunning bool
	// TCPEstablished overrides the automatic choice (runc only; Docker's
	// API has no such option).
	TCPEstablished *bool
	// ExtUnixSockets and FileLocks are passed to runc.
	ExtUnixSockets, FileLocks bool
	// Progress, if set, receives progress reports.
	Progress checkpoint.Progress
}

// DumpResult describes a finished container checkpoint.
type DumpResult struct {
	Path     string
	Size     int64
	Manifest *archive.Manifest
	// Notes explain automatic choices.
	Notes []string
	// Layer counts the writable layer's changes carried.
	Layer LayerStats
	// Timings: the runtime's checkpoint, the writable layer, the archive,
	// the in-place restore (LeaveRunning) and the whole.
	CheckpointTime, LayerTime, ArchiveTime, ResumeTime, Total time.Duration
}

// Dump checkpoints a running container into a new archive.
func (s *Service) Dump(ctx context.Context, req DumpRequest) (*DumpResult, error) {
	start := time.Now()
	prog := req.Progress
	if prog == nil {
		prog = checkpoint.NoProgress{}
	}
	if req.Container == "" {
		return nil, invalid("no container given")
	}
	d, err := s.driver(ctx, req.Runtime)
	if err != nil {
		return nil, err
	}
	t, err := d.lookup(ctx, req.Container)
	if err != nil {
		return nil, err
	}
	tree, err := describeTree(t.pid)
	if err != nil {
		return nil, invalid("%s container %s has no running process (PID %d): %v", d.name(), req.Container, t.pid, err)
	}
	if len(tree.hostFiles) > 0 {
		return nil, &CRIUError{Op: "checkpoint", Runtime: d.name(), Cause: CauseHostFile,
			Err:   fmt.Errorf("%w: the container has files of the host open, which CRIU cannot find inside it", checkpoint.ErrInvalidInput),
			Lines: tree.hostFiles,
			Hint:  "start the container with its stdout and stderr on /dev/null, a pipe or a file inside its rootfs (`cedana run runc` connects them to pipes and logs them to a file); nothing was checkpointed, the container is still running"}
	}
	version, err := s.criu.CheckVersion()
	if err != nil {
		return nil, err
	}
	o := criuOptions{ExtUnixSockets: req.ExtUnixSockets, FileLocks: req.FileLocks,
		NetworkLock: s.set.NetworkLock}
	if o.NetworkLock == criu.NetworkLockAuto {
		o.NetworkLock = criu.NetworkLockNFTables
	}
	notes := append([]string(nil), t.notes...)
	if tree.tcp != "" {
		o.TCPEstablished = true
		notes = append(notes, "tcp-established: "+tree.tcp)
	}
	if req.TCPEstablished != nil {
		o.TCPEstablished = *req.TCPEstablished
		notes = append(notes, fmt.Sprintf("tcp-established=%v: set by flag", o.TCPEstablished))
	}
	if o.TCPEstablished && d.name() == Docker && !dockerHasCRIUOption("tcp-established") {
		return nil, &CRIUError{Op: "checkpoint", Runtime: Docker, Cause: CauseTCP,
			Err:  fmt.Errorf("%w: %s, and Docker's checkpoint API cannot ask CRIU to keep TCP connections", checkpoint.ErrInvalidInput, tree.tcp),
			Hint: d.optionHint("tcp-established") + "; nothing was checkpointed, the container is still running"}
	}

	name := t.info.Name
	if name == "" {
		name = shortID(t.info.ID)
	}
	path, err := archivePath(req.Dir, req.Path, name, start)
	if err != nil {
		return nil, err
	}
	staging, err := s.stagingDir(ctx, d, filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(staging)
	if o.WorkDir, err = s.workDir("dump", d.name(), name, start); err != nil {
		return nil, err
	}
	imagesDir := filepath.Join(staging, "images")

	s.log.Info("checkpointing container", "runtime", d.name(), "id", t.info.ID, "archive", path, "staging", staging)
	prog.Start("checkpointing", 0)
	ckStart := time.Now()
	err = d.checkpoint(ctx, t, imagesDir, o)
	prog.Done()
	if err != nil {
		return nil, fmt.Errorf("checkpoint of %s container %s failed, it is still running: %w", d.name(), req.Container, err)
	}
	res := &DumpResult{Path: path, Notes: notes, CheckpointTime: time.Since(ckStart)}

	// The container is stopped now: every failure below restores it.
	fail := func(err error) (*DumpResult, error) {
		if rerr := d.resume(ctx, t, imagesDir, o); rerr != nil {
			return nil, fmt.Errorf("%w; restarting the container from its checkpoint failed too: %v", err, rerr)
		}
		return nil, fmt.Errorf("%w (the container was restored in place and runs again)", err)
	}
	layerStart := time.Now()
	cdir := filepath.Join(staging, "container")
	if err := os.Mkdir(cdir, 0o700); err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(cdir, configEntry), t.config, 0o600); err != nil {
		return fail(err)
	}
	extra := []archive.ExtraFile{
		{Name: archive.ContainerPrefix + configEntry, Source: filepath.Join(cdir, configEntry)},
		{Name: archive.ContainerPrefix + layerEntry, Source: filepath.Join(cdir, layerEntry)},
	}
	for name, data := range t.extra {
		if err := os.WriteFile(filepath.Join(cdir, name), data, 0o600); err != nil {
			return fail(err)
		}
		extra = append(extra, archive.ExtraFile{Name: archive.ContainerPrefix + name, Source: filepath.Join(cdir, name)})
	}
	lf, err := os.OpenFile(filepath.Join(cdir, layerEntry), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fail(err)
	}
	res.Layer, err = t.writeLayer(lf)
	if cerr := lf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	res.LayerTime = time.Since(layerStart)

	m := &archive.Manifest{
		FormatVersion: archive.FormatVersion,
		Kind:          d.name(),
		Created:       time.Now().UTC(),
		Cedana:        checkpoint.Version,
		CRIU:          archive.CRIUInfo{Version: version, VersionString: criu.FormatVersion(version)},
		Host:          archive.CurrentHost(),
		RootPID:       t.pid,
		PIDNamespace:  true, // runtimes always give containers their own PID namespace
		Processes:     tree.processes,
		Options: archive.DumpOptions{TCPEstablished: o.TCPEstablished, ExtUnixSockets: o.ExtUnixSockets,
			FileLocks: o.FileLocks, NetworkLock: string(o.NetworkLock), LeaveRunning: req.LeaveRunning},
		Container: &t.info,
	}
	archStart := time.Now()
	prog.Start("writing archive", archive.DirSize(imagesDir)+archive.DirSize(cdir))
	m, size, err := archive.Create(path, m, imagesDir, nil, archive.WriteOptions{Progress: prog.Advance,
		Concurrency: runtime.NumCPU(), Extra: extra})
	prog.Done()
	if err != nil {
		return fail(fmt.Errorf("writing the archive failed: %w", err))
	}
	res.ArchiveTime, res.Size, res.Manifest = time.Since(archStart), size, m
	if req.LeaveRunning {
		rs := time.Now()
		if err := d.resume(ctx, t, imagesDir, o); err != nil {
			return nil, fmt.Errorf("the archive %s was written, but restarting the container in place failed: %w", path, err)
		}
		res.ResumeTime = time.Since(rs)
	} else {
		d.finish(t)
	}
	res.Total = time.Since(start)
	return res, nil
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
	// Progress, if set, receives progress reports.
	Progress checkpoint.Progress
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
	if err := s.checkCompatible(m); err != nil {
		return nil, err
	}
	d, err := s.driver(ctx, req.Runtime)
	if err != nil {
		return nil, err
	}
	staging, err := s.stagingDir(ctx, d, filepath.Dir(req.Path))
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(staging)
	prog.Start("verifying and extracting", m.TotalSize())
	err = r.Extract(staging, archive.ExtractOptions{Progress: prog.Advance, Concurrency: runtime.NumCPU()})
	prog.Done()
	if err != nil {
		return nil, fmt.Errorf("%s: %w (nothing was restored)", req.Path, err)
	}
	extractTime := time.Since(start)
	prog.Start("restoring", 0)
	res, err := d.restore(ctx, m, staging, req)
	prog.Done()
	if err != nil {
		return nil, err
	}
	res.Manifest, res.ExtractTime, res.Total = m, extractTime, time.Since(start)
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

// checkCompatible refuses archives this machine cannot restore.
func (s *Service) checkCompatible(m *archive.Manifest) error {
	if m.Host.Arch != "" && m.Host.Arch != runtime.GOARCH {
		return invalid("the checkpoint was taken on %s, this machine is %s", m.Host.Arch, runtime.GOARCH)
	}
	v, err := s.criu.CheckVersion()
	if err != nil {
		return err
	}
	if m.CRIU.Version/100 > v/100 {
		return invalid("the checkpoint was made by CRIU %s but this machine has CRIU %s; install CRIU ≥ %s (make setup)",
			m.CRIU.VersionString, criu.FormatVersion(v), m.CRIU.VersionString)
	}
	return nil
}

// stagingDir creates a private staging directory in the configured
// directory, the driver's choice, /dev/shm, or next to the archive.
func (s *Service) stagingDir(ctx context.Context, d driver, archiveDir string) (string, error) {
	parent := s.set.StagingDir
	if parent == "" {
		p, err := d.stagingParent(ctx)
		if err != nil {
			return "", err
		}
		parent = p
	}
	if parent == "" {
		parent = archiveDir
		if free, err := freeBytes("/dev/shm"); err == nil && free > 256<<20 {
			parent = "/dev/shm"
		}
	}
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return "", fmt.Errorf("create staging dir in %s: %w", parent, err)
	}
	staging, err := os.MkdirTemp(parent, ".cedana-staging-")
	if err != nil {
		return "", fmt.Errorf("create staging dir in %s: %w", parent, err)
	}
	return staging, nil
}

// workDir creates a directory for one operation's CRIU logs.
func (s *Service) workDir(op, rt, name string, t time.Time) (string, error) {
	dir := filepath.Join(s.set.LogDir, fmt.Sprintf("%s-%s-%s-%s", rt, op, checkpoint.SanitizeName(name),
		t.UTC().Format("20060102T150405.000000000Z")))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create log dir: %w", err)
	}
	return dir, nil
}

// archivePath picks a new archive path that does not exist yet.
func archivePath(dir, exact, name string, t time.Time) (string, error) {
	if exact != "" {
		if _, err := os.Lstat(exact); err == nil {
			return "", invalid("%s already exists", exact)
		}
		return exact, nil
	}
	if dir == "" {
		return "", invalid("no directory for the archive (use -d or set shared_storage.dump_storage_dir)")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	for n := 0; n < 1000; n++ {
		p := filepath.Join(dir, checkpoint.ArchiveName(name, t, n))
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			return p, nil
		}
	}
	return "", fmt.Errorf("no free archive name in %s", dir)
}

func freeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
