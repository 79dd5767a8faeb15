package container

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/fault"
)

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
	// KeepStopped leaves the container's processes stopped (not killed)
	// once the archive is durable: DumpResult.Stopped then resumes it or
	// removes it (a migration's source, see internal/jobs). runc only.
	KeepStopped bool
	// Transient: the archive only feeds a migration's restore and is
	// removed afterwards, so it is not fsynced (see
	// checkpoint.DumpRequest.Transient).
	Transient bool
	// Destination, if set, receives the archive as one stream instead of
	// a file (Dir and Path are then ignored): a migration streams it to
	// the target (see checkpoint.DumpRequest.Destination). DestinationName
	// names it in messages and is DumpResult.Path.
	Destination     archive.Destination
	DestinationName string
	// TCPEstablished overrides the automatic choice (runc only; Docker's
	// API has no such option).
	TCPEstablished *bool
	// ExtUnixSockets and FileLocks are passed to runc.
	ExtUnixSockets, FileLocks bool
	// Progress, if set, receives progress reports.
	Progress checkpoint.Progress
	// HookEnv is added to the environment of hook scripts.
	HookEnv []string
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
	// Warnings are problems that did not fail the dump (a post-dump hook).
	Warnings []string
	// Stopped is the container a KeepStopped dump left stopped (nil
	// otherwise).
	Stopped *StoppedContainer
}

// resumeTimeout bounds the in-place restore of a container after a
// failed dump. It runs on a context of its own: a client that went away
// or a daemon shutting down must not leave the container stopped.
const resumeTimeout = 5 * time.Minute

// Dump checkpoints a running container into a new archive.
//
// The runtime's checkpoint stops the container; from then on every
// failure restores it in place from the images just taken, on a context
// that neither the caller's cancellation nor its deadline reaches. If
// that restore fails too, the images are kept (the error says where), so
// that the container can still be restored by hand.
func (s *Service) Dump(ctx context.Context, req DumpRequest) (*DumpResult, error) {
	start := time.Now()
	prog := req.Progress
	if prog == nil {
		prog = checkpoint.NoProgress{}
	}
	if req.Container == "" {
		return nil, invalid("no container given")
	}
	if req.KeepStopped && req.LeaveRunning {
		return nil, invalid("a checkpoint cannot both leave the container running and keep it stopped")
	}
	d, err := s.driver(req.Runtime)
	if err != nil {
		return nil, err
	}
	sd, streams := d.(memoryStreamer)
	if req.KeepStopped && !streams {
		return nil, invalid("a %s container cannot be kept stopped after its checkpoint (only runc containers can): its runtime kills it", d.name())
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
		return nil, &criu.Error{Op: "checkpoint", Runtime: d.name(), Cause: CauseHostFile,
			Err:   fmt.Errorf("%w: the container has files of the host open, which CRIU cannot find inside it", checkpoint.ErrInvalidInput),
			Lines: tree.hostFiles,
			Hint:  "start the container with its stdout and stderr on /dev/null, a pipe or a file inside its rootfs (`cedana run runc` connects them to pipes and logs them to a file); nothing was checkpointed, the container is still running"}
	}
	if len(tree.mptcp) > 0 {
		return nil, &criu.Error{Op: "checkpoint", Runtime: d.name(), Cause: criu.CauseMPTCP,
			Err:   fmt.Errorf("%w: the container has Multipath TCP sockets", checkpoint.ErrMPTCP),
			Lines: tree.mptcp,
			Hint: "start the container's program with GODEBUG=multipathtcp=0 in its environment (Go ≥ 1.24 listens with MPTCP by default), " +
				"or with MPTCP off in its network namespace (sysctl net.mptcp.enabled=0); nothing was checkpointed, the container is still running"}
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
		return nil, &criu.Error{Op: "checkpoint", Runtime: Docker, Cause: criu.CauseTCPEstablished,
			Err:  fmt.Errorf("%w: %s, and Docker's checkpoint API cannot ask CRIU to keep TCP connections", checkpoint.ErrInvalidInput, tree.tcp),
			Hint: d.optionHint("tcp-established") + "; nothing was checkpointed, the container is still running"}
	}

	name := t.info.Name
	if name == "" {
		name = shortID(t.info.ID)
	}
	path, stagingFallback := req.DestinationName, os.TempDir()
	if req.Destination == nil {
		if path, err = checkpoint.ArchivePath(req.Dir, req.Path, name, start); err != nil {
			return nil, err
		}
		stagingFallback = filepath.Dir(path)
	}
	preferred, err := d.stagingParent(ctx)
	if err != nil {
		return nil, err
	}
	var rss int64
	for _, p := range tree.processes {
		rss += int64(p.RSS)
	}
	staging, err := s.eng.StagingDir(preferred, stagingFallback, rss)
	if err != nil {
		return nil, err
	}
	keepStaging := false
	defer func() {
		if !keepStaging {
			os.RemoveAll(staging)
		}
	}()
	if o.WorkDir, err = s.eng.WorkDir(d.name()+"-dump", name, start); err != nil {
		return nil, err
	}
	imagesDir := filepath.Join(staging, "images")
	if err := s.eng.RunHook(ctx, "pre-dump", t.pid, path, req.HookEnv); err != nil {
		return nil, fmt.Errorf("checkpoint of %s container %s not started, it is still running: %w", d.name(), req.Container, err)
	}

	job := &dumpJob{d: d, t: t, req: req, tree: tree, version: version, o: o, notes: notes, name: name,
		path: path, staging: staging, imagesDir: imagesDir, rss: rss, start: start, prog: prog}
	// Once the runtime starts, the container may stop: nothing the caller
	// cancels may interrupt it halfway, or its resume.
	ctx = context.WithoutCancel(ctx)
	// KeepStopped takes the streamed path whatever the size: its CRIU
	// bridge is what turns runc's "leave running" into "leave stopped".
	if streams && (req.KeepStopped || s.eng.StreamsMemory(rss)) {
		return s.dumpStreamed(ctx, sd, job)
	}

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
		prog.Done()
		if rerr := s.resume(d, t, imagesDir, o); rerr != nil {
			kept, kerr := keepImages(staging, name, start)
			keepStaging = true
			s.log.Error("a failed container dump could not restart the container", "runtime", d.name(), "id", t.info.ID,
				"error", rerr, "cause", err, "images", kept)
			return nil, fmt.Errorf("%w; restarting the container from its checkpoint failed too, it is STOPPED: %v; %s",
				err, rerr, keptMessage(d.name(), t.info.ID, kept, kerr))
		}
		return nil, fmt.Errorf("%w (the container was restored in place and runs again)", err)
	}
	committed := false
	defer func() {
		if r := recover(); r != nil {
			if !committed {
				_ = s.resume(d, t, imagesDir, o) // a bug must not leave it stopped either
			}
			panic(r)
		}
	}()
	if err := s.fault.At(fault.AfterFreeze); err != nil {
		return fail(err)
	}
	layerStart := time.Now()
	extra, layer, err := writeContainerFiles(staging, t)
	if err != nil {
		return fail(err)
	}
	res.Layer, res.LayerTime = layer, time.Since(layerStart)
	m := job.manifest()
	archStart := time.Now()
	prog.Start("writing archive", archive.DirSize(imagesDir)+archive.DirSize(filepath.Join(staging, "container")))
	wopts := archive.WriteOptions{Progress: prog.Advance, Concurrency: runtime.NumCPU(), Extra: extra, Fault: s.fault,
		Transient: req.Transient}
	var size int64
	if req.Destination != nil {
		m, size, err = archive.CreateTo(path, req.Destination, m, imagesDir, nil, wopts)
	} else {
		m, size, err = archive.Create(path, m, imagesDir, nil, wopts)
	}
	prog.Done()
	if err != nil {
		return fail(fmt.Errorf("writing the archive failed: %w", err))
	}
	res.ArchiveTime, res.Size, res.Manifest = time.Since(archStart), size, m
	committed = true
	if req.LeaveRunning {
		rs := time.Now()
		if err := s.resume(d, t, imagesDir, o); err != nil {
			return nil, fmt.Errorf("the archive %s was written, but restarting the container in place failed: %w", path, err)
		}
		res.ResumeTime = time.Since(rs)
	} else {
		d.finish(t)
	}
	res.Total = time.Since(start)
	if err := s.eng.RunHook(ctx, "post-dump", t.pid, path, req.HookEnv); err != nil {
		res.Warnings = append(res.Warnings, err.Error())
	}
	return res, nil
}

// dumpJob is a container dump under way, past its checks.
type dumpJob struct {
	d         driver
	t         *target
	req       DumpRequest
	tree      *treeInfo
	version   int
	o         criuOptions
	notes     []string
	name      string
	path      string
	staging   string
	imagesDir string
	rss       int64
	start     time.Time
	prog      checkpoint.Progress
}

// manifest is the archive's manifest, before its entries.
func (j *dumpJob) manifest() *archive.Manifest {
	return &archive.Manifest{
		FormatVersion: archive.FormatVersion,
		Kind:          j.d.name(),
		Created:       time.Now().UTC(),
		Cedana:        checkpoint.Version,
		CRIU:          archive.CRIUInfo{Version: j.version, VersionString: criu.FormatVersion(j.version)},
		Host:          archive.CurrentHost(),
		RootPID:       j.t.pid,
		PIDNamespace:  true, // runtimes always give containers their own PID namespace
		Processes:     j.tree.processes,
		Options: archive.DumpOptions{TCPEstablished: j.o.TCPEstablished, ExtUnixSockets: j.o.ExtUnixSockets,
			FileLocks: j.o.FileLocks, NetworkLock: string(j.o.NetworkLock), LeaveRunning: j.req.LeaveRunning,
			// Restores stream large memory, as a process's.
			Streamable: checkpoint.StreamableTree(j.tree.processes, j.rss)},
		Container: &j.t.info,
	}
}

// writeContainerFiles writes the container's own entries (configuration,
// writable layer, the driver's extras) into staging/container, once the
// container is stopped, and returns them as archive entries.
func writeContainerFiles(staging string, t *target) ([]archive.ExtraFile, LayerStats, error) {
	cdir := filepath.Join(staging, "container")
	if err := os.Mkdir(cdir, 0o700); err != nil {
		return nil, LayerStats{}, err
	}
	if err := os.WriteFile(filepath.Join(cdir, configEntry), t.config, 0o600); err != nil {
		return nil, LayerStats{}, err
	}
	for name, data := range t.extra {
		if err := os.WriteFile(filepath.Join(cdir, name), data, 0o600); err != nil {
			return nil, LayerStats{}, err
		}
	}
	lf, err := os.OpenFile(filepath.Join(cdir, layerEntry), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, LayerStats{}, err
	}
	layer, err := t.writeLayer(lf)
	if cerr := lf.Close(); err == nil {
		err = cerr
	}
	return containerEntries(staging, t), layer, err
}

// containerEntries are the archive entries writeContainerFiles writes.
func containerEntries(staging string, t *target) []archive.ExtraFile {
	cdir := filepath.Join(staging, "container")
	extra := []archive.ExtraFile{
		{Name: archive.ContainerPrefix + configEntry, Source: filepath.Join(cdir, configEntry)},
		{Name: archive.ContainerPrefix + layerEntry, Source: filepath.Join(cdir, layerEntry)},
	}
	names := make([]string, 0, len(t.extra))
	for name := range t.extra {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		extra = append(extra, archive.ExtraFile{Name: archive.ContainerPrefix + name, Source: filepath.Join(cdir, name)})
	}
	return extra
}

// resume restores a checkpointed container in place, on a context of its
// own bounded by resumeTimeout.
func (s *Service) resume(d driver, t *target, imagesDir string, o criuOptions) error {
	ctx, cancel := context.WithTimeout(context.Background(), resumeTimeout)
	defer cancel()
	return d.resume(ctx, t, imagesDir, o)
}

// keepImages moves a failed dump's staging directory out of the way of
// stale-staging cleanup, next to where it was, and returns the kept
// images directory.
func keepImages(staging, name string, t time.Time) (string, error) {
	kept := filepath.Join(filepath.Dir(staging), fmt.Sprintf("cedana-kept-%s-%s", checkpoint.SanitizeName(name),
		t.UTC().Format("20060102T150405.000Z")))
	if err := os.Rename(staging, kept); err != nil {
		return filepath.Join(staging, "images"), err
	}
	return filepath.Join(kept, "images"), nil
}

// keptMessage tells a user where the images of a container left stopped
// are, and how to restore it from them.
func keptMessage(rt, id, images string, err error) string {
	if err != nil {
		return fmt.Sprintf("its checkpoint images are left in %s (moving them out of the staging area failed: %v; copy them elsewhere before another cedana cleans it up)", images, err)
	}
	switch rt {
	case Runc:
		return fmt.Sprintf("its checkpoint images are kept in %s: restore it with `runc restore -d --image-path %s --bundle BUNDLE %s`", images, images, id)
	case Docker:
		return fmt.Sprintf("its checkpoint images are kept in %s: copy them to the container's checkpoints directory and `docker start --checkpoint NAME %s`", images, id)
	}
	return fmt.Sprintf("its checkpoint images are kept in %s", images)
}
