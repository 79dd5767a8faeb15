package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/chunks"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/fault"
	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/storage"
)

// DumpRequest asks for a checkpoint of a process tree.
type DumpRequest struct {
	// PID is the root of the tree.
	PID int
	// Dir receives the archive; it is created (0700) if missing.
	Dir string
	// Path, if set, is the exact archive path (Dir is then ignored).
	Path string
	// Storage, if set, receives the archive instead of a local file (Dir
	// and Path are then ignored): it streams into the store as object Key,
	// or, when Key is empty, KeyPrefix plus a new name, and becomes visible
	// only once complete. DumpResult.Path is then its storage.Location.
	Storage   storage.Backend
	Key       string
	KeyPrefix string
	// Destination, if set, receives the archive as one sequential stream
	// instead of a file or a store (Dir, Path and Storage are then
	// ignored), and publishes it on Commit: a stop-and-copy migration
	// streams it straight to the target node. DestinationName names it
	// in messages and is DumpResult.Path.
	Destination     archive.Destination
	DestinationName string
	// LeaveRunning keeps the tree running after the dump.
	LeaveRunning bool
	// Overrides of the automatic choices; nil means "decide for me".
	TCPEstablished *bool
	ShellJob       *bool
	// ExtUnixSockets, FileLocks and LinkRemap are off unless asked for
	// (FileLocks also turns on by itself when the tree holds a file lock).
	ExtUnixSockets bool
	FileLocks      bool
	LinkRemap      bool
	// GhostLimit overrides Settings.GhostLimit when > 0.
	GhostLimit uint64
	// NetworkLock overrides Settings.NetworkLock when set.
	NetworkLock criu.NetworkLock
	// Progress, if set, receives progress reports.
	Progress Progress
	// HookEnv is added to the environment of hook scripts.
	HookEnv []string
	// LogGroup, if set, puts CRIU's log into one of KeepLogs work
	// directories of the group, reused in turn (GroupWorkDir), and keeps
	// the directory of a failure apart: a daemon's periodic checkpoints of
	// one job keep the CRIU logs of their failures and last few successes.
	// The group's dumps must not overlap.
	LogGroup string
	KeepLogs int
	// AfterCRIU, if set, is called as soon as CRIU has dumped the tree
	// successfully, before the archive is written: with LeaveRunning the
	// tree runs again from then on. The daemon reads there what the tree
	// looked like when it was dumped (see internal/jobs/skip.go).
	AfterCRIU func()
	// KeepStopped leaves the tree stopped once the archive is durable,
	// instead of killing it: DumpResult.Stopped then resumes or kills it.
	// A migration keeps the source copy so until the target runs the job.
	KeepStopped bool
	// Lazy (with KeepStopped) leaves the tree's private memory out of the
	// archive: CRIU serves it from a page server on a loopback port
	// until a lazy restore has pulled it (DumpResult.Lazy), the source
	// half of a lazy migration.
	Lazy bool
	// Transient: the archive only feeds a restore on another node and
	// is removed afterwards (a migration's), so it is not fsynced
	// (archive.WriteOptions.Transient) and must not be recorded as a
	// checkpoint. Local files only.
	Transient bool

	// tcpAppeared: a connection was established after the look at the
	// tree (see Dump); --tcp-established as if the look had seen it.
	tcpAppeared bool
}

// DumpResult describes a finished checkpoint.
type DumpResult struct {
	// Path is the archive written.
	Path string
	// Size is the archive's size in bytes.
	Size int64
	// Manifest is the archive's manifest.
	Manifest *archive.Manifest
	// Reasons explains the options chosen automatically.
	Reasons []string
	// Skipped lists files open for writing that were too large to carry.
	Skipped []string
	// Timings of each phase.
	CRIUTime, ArchiveTime, Total time.Duration
	// CRIUCPU is the CPU time CRIU's process used (0 when unknown).
	CRIUCPU time.Duration
	// Stored says what a deduplicating backend stored (nil otherwise).
	Stored *chunks.Stats
	// LogPath is CRIU's log.
	LogPath string
	// Warnings are problems that did not fail the dump (a post-dump hook).
	Warnings []string
	// Stopped is the tree left stopped by KeepStopped (nil otherwise).
	Stopped *StoppedTree
	// Lazy is CRIU serving the tree's memory, with DumpRequest.Lazy: the
	// caller waits for it (every page pulled) or aborts it before the
	// tree is killed or resumed.
	Lazy *criu.LazyDump
}

// Dump checkpoints the tree rooted at req.PID into a new archive.
//
// The tree is frozen by CRIU and stays frozen until the archive is durable
// on disk (written, fsynced, renamed into place); only then is it killed
// (or resumed, with LeaveRunning). If anything fails once CRIU started,
// the tree is resumed (see resumeTree) and no archive appears under the
// final name; if it cannot be resumed, the error wraps ErrLeftStopped and
// names the processes left stopped.
func (s *Service) Dump(ctx context.Context, req DumpRequest) (*DumpResult, error) {
	// Cedana chooses CRIU options from a look at the tree, which keeps
	// running until CRIU freezes it: a file lock taken or a connection
	// established in between makes CRIU refuse for want of --file-locks
	// or --tcp-established. CRIU let the tree go on; dump again with the
	// option (each at most once, and never against the user's choice).
	var again []string
	for {
		res, err := s.dumpOnce(ctx, req)
		if err == nil {
			res.Reasons = append(res.Reasons, again...)
			return res, nil
		}
		if ctx.Err() != nil {
			return res, err
		}
		switch {
		case !req.FileLocks && criu.IsCause(err, criu.CauseFileLocks):
			req.FileLocks = true
			again = append(again, "file-locks: a process took a file lock while the tree was being frozen; dumped again with --file-locks")
		case req.TCPEstablished == nil && !req.tcpAppeared && criu.IsCause(err, criu.CauseTCPEstablished):
			req.tcpAppeared = true
			again = append(again, "tcp-established: a TCP connection was established while the tree was being frozen; dumped again with --tcp-established")
		default:
			return res, err
		}
		s.log.Info("dumping again", "pid", req.PID, "why", again[len(again)-1])
	}
}

// dumpOnce is one attempt of Dump.
func (s *Service) dumpOnce(ctx context.Context, req DumpRequest) (*DumpResult, error) {
	start := time.Now()
	prog := req.Progress
	if prog == nil {
		prog = NoProgress{}
	}
	if req.PID <= 0 {
		return nil, fmt.Errorf("%w: PID must be a positive number, got %d", ErrInvalidInput, req.PID)
	}
	if req.Lazy && (!req.KeepStopped || req.LeaveRunning) {
		return nil, fmt.Errorf("%w: a lazy dump keeps the tree stopped", ErrInvalidInput)
	}
	if !proc.Exists(req.PID) {
		return nil, fmt.Errorf("%w: no process with PID %d", ErrInvalidInput, req.PID)
	}
	snap, err := takeSnapshot(req.PID)
	if err != nil {
		if errors.Is(err, proc.ErrNoProcess) {
			return nil, fmt.Errorf("%w: no process with PID %d", ErrInvalidInput, req.PID)
		}
		return nil, err
	}
	if snap.pids[os.Getpid()] {
		return nil, fmt.Errorf("%w: PID %d is an ancestor of cedana itself; run cedana from outside the tree you want to checkpoint", ErrInvalidInput, req.PID)
	}
	criuVersion, err := s.criu.CheckVersion()
	if err != nil {
		return nil, err
	}
	copts, reasons := s.chooseOptions(req, snap)

	name := snap.processes[0].Name
	target, err := dumpTarget(ctx, req, name, start)
	if err != nil {
		return nil, err
	}
	path := target.loc
	staging, err := s.StagingDir("", target.stagingFallback(), int64(snap.rss()))
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(staging)
	imagesDir := filepath.Join(staging, "images")
	if err := os.Mkdir(imagesDir, 0o700); err != nil {
		return nil, fmt.Errorf("create staging dir: %w", err)
	}
	var work string
	if req.LogGroup != "" {
		work, err = s.GroupWorkDir("dump", req.LogGroup, req.KeepLogs)
	} else {
		work, err = s.WorkDir("dump", name, start)
	}
	if err != nil {
		return nil, err
	}
	copts.ImagesDir = imagesDir
	copts.LogDir = work
	copts.LogFile = "dump.log"

	if err := runHook(ctx, "pre-dump", s.set.Hooks.PreDump, req.PID, path, req.HookEnv); err != nil {
		return nil, fmt.Errorf("checkpoint of PID %d not started, the process is still running: %w", req.PID, err)
	}
	stream := s.set.Stream && snap.rss() >= streamMinBytes && !req.Lazy
	s.log.Info("dumping", "pid", req.PID, "tasks", len(snap.processes), "archive", path, "staging", staging,
		"stream", stream, "reasons", strings.Join(reasons, "; "))
	wopts := archive.WriteOptions{Progress: prog.Advance, Concurrency: runtime.NumCPU(), Fault: s.fault, Transient: req.Transient}
	var w *archive.Writer // streamed dumps write the archive while CRIU runs
	if stream {
		if w, err = target.newWriter(ctx, wopts); err != nil {
			return nil, fmt.Errorf("checkpoint of PID %d not started, the process is still running: %w", req.PID, err)
		}
	}

	// From here on the tree may be frozen: every failure resumes it.
	before := stoppedBefore(snap)
	var lazy *criu.LazyDump
	fail := func(err error) (*DumpResult, error) {
		prog.Done()
		if lazy != nil {
			lazy.Abort() // CRIU lets go of the tree before it resumes
		}
		if req.LogGroup != "" {
			s.KeepFailedWorkDir(work, err)
		} else {
			markFailed(work, err)
		}
		if w != nil {
			w.Abort()
		}
		if rerr := resumeTree(req.PID, snap, before); rerr != nil {
			s.log.Error("a failed dump left processes stopped", "pid", req.PID, "error", rerr, "cause", err)
			return nil, fmt.Errorf("checkpoint of PID %d failed and the process could not be resumed: %w\n  the checkpoint failed because: %w", req.PID, rerr, err)
		}
		return nil, fmt.Errorf("checkpoint of PID %d failed, the process is still running: %w", req.PID, err)
	}
	done := false
	defer func() {
		if r := recover(); r != nil {
			if !done {
				_ = resumeTree(req.PID, snap, before)
			}
			panic(r)
		}
	}()

	criuStart := time.Now()
	var (
		res *criu.DumpResult
		col *imageCollector
	)
	if stream {
		prog.Start("checkpointing", int64(snap.rss()))
		col = newImageCollector(w, imagesDir, s.fault)
		res, err = s.criu.DumpStreamed(copts, col.sink)
	} else if req.Lazy {
		prog.Start("checkpointing", 0)
		if lazy, err = s.criu.DumpLazy(copts); err == nil {
			res = &criu.DumpResult{LogPath: lazy.LogPath}
		}
		prog.Done()
	} else {
		prog.Start("checkpointing", 0)
		res, err = s.criu.Dump(copts)
		prog.Done()
	}
	if err == nil {
		err = s.fault.At(fault.AfterFreeze)
	}
	if err != nil {
		return fail(err)
	}
	criuTime := time.Since(criuStart)
	if req.AfterCRIU != nil {
		req.AfterCRIU()
	}
	// Describe the tree again now that it is frozen: it may have forked
	// since the snapshot, and what is frozen is exactly what CRIU dumped.
	frozen := copts.LeaveStopped
	if frozen {
		if pids, terr := proc.Tree(req.PID); terr == nil {
			if post, serr := snapshotOf(req.PID, pids); serr == nil {
				snap = post
			}
		}
	}
	if lazy != nil {
		// CRIU holds the tree frozen while it serves the memory; should
		// CRIU die, the tree would run again on its own. A SIGSTOP
		// queued now stops it the moment CRIU lets go, whatever way it
		// goes (see LazyDump.Abort and StoppedTree.Resume).
		stopAll(snap)
	}
	// Which processes the user had stopped is known from before the
	// freeze only: a restore leaves them stopped.
	for i := range snap.processes {
		snap.processes[i].Stopped = before[snap.processes[i].PID]
	}

	m := &archive.Manifest{
		FormatVersion: archive.FormatVersion,
		Kind:          "process",
		Created:       time.Now().UTC(),
		Cedana:        Version,
		CRIU:          archive.CRIUInfo{Version: criuVersion, VersionString: criu.FormatVersion(criuVersion)},
		Host:          archive.CurrentHost(),
		RootPID:       req.PID,
		PIDNamespace:  ownPIDNamespace(req.PID),
		Processes:     snap.processes,
		Options: archive.DumpOptions{
			TCPEstablished: copts.TCPEstablished, ShellJob: copts.ShellJob, ExtUnixSockets: copts.ExtUnixSockets,
			FileLocks: copts.FileLocks, LinkRemap: copts.LinkRemap, GhostLimit: copts.GhostLimit,
			NetworkLock: string(effectiveLock(copts.NetworkLock)), LeaveRunning: copts.LeaveRunning,
			ExternalTTYs: copts.ExternalTTYs,
			// Restores stream only large memory (see streamMinBytes).
			Streamable: snap.rss() >= streamMinBytes && streamable(snap.processes) && lazy == nil,
			LazyPages:  lazy != nil,
		},
	}
	if st := res.Stats; st != nil {
		m.Stats = &archive.DumpStats{FreezingTimeUS: st.FreezingTimeUS, FrozenTimeUS: st.FrozenTimeUS,
			MemdumpTimeUS: st.MemdumpTimeUS, MemwriteTimeUS: st.MemwriteTimeUS, PagesWritten: st.PagesWritten}
	}
	files, skipped := snap.carriedFiles(s.set.CarryFileMax, s.set.CarryTotalMax)

	archStart := time.Now()
	var size int64
	if w != nil {
		// The pages are in the archive already; add the other images and
		// the carried files, then the manifest.
		if err = col.finish(); err == nil {
			m, size, err = w.Close(m, files)
		}
	} else {
		prog.Start("writing archive", archive.DirSize(imagesDir)+sumSizes(files))
		m, size, err = target.create(ctx, m, imagesDir, files, wopts)
	}
	prog.Done()
	if err != nil {
		return fail(fmt.Errorf("writing the archive failed: %w", err))
	}
	done = true
	out := &DumpResult{
		Path: path, Size: size, Manifest: m, Reasons: reasons, Skipped: skipped,
		CRIUTime: criuTime, ArchiveTime: time.Since(archStart), Total: time.Since(start),
		LogPath: res.LogPath, CRIUCPU: res.CPU, Stored: target.stored(), Lazy: lazy,
	}
	switch {
	case frozen && req.KeepStopped:
		out.Stopped = &StoppedTree{root: req.PID, snap: snap, before: before}
	case frozen:
		kill(snap)
	}
	s.log.Info("checkpointed", "pid", req.PID, "criu", criuTime, "archive_after_criu", out.ArchiveTime, "total", out.Total)
	if err := runHook(ctx, "post-dump", s.set.Hooks.PostDump, req.PID, path, req.HookEnv); err != nil {
		out.Warnings = append(out.Warnings, err.Error())
	}
	return out, nil
}

// chooseOptions maps a request and what the snapshot found to CRIU
// options, explaining each automatic choice.
func (s *Service) chooseOptions(req DumpRequest, snap *snapshot) (criu.DumpOptions, []string) {
	o := criu.DumpOptions{
		PID:            req.PID,
		LeaveRunning:   req.LeaveRunning,
		LeaveStopped:   !req.LeaveRunning,
		TCPEstablished: snap.tcpEstablished || req.tcpAppeared,
		ShellJob:       snap.shellJob,
		ExtUnixSockets: req.ExtUnixSockets,
		FileLocks:      req.FileLocks || snap.fileLocks,
		LinkRemap:      req.LinkRemap,
		GhostLimit:     s.set.GhostLimit,
		NetworkLock:    s.set.NetworkLock,
		ExternalTTYs:   snap.ttys,
	}
	reasons := append([]string(nil), snap.why...)
	if req.TCPEstablished != nil {
		o.TCPEstablished = *req.TCPEstablished
		reasons = append(reasons, fmt.Sprintf("tcp-established=%v: set by flag", o.TCPEstablished))
	}
	if req.ShellJob != nil {
		o.ShellJob = *req.ShellJob
		reasons = append(reasons, fmt.Sprintf("shell-job=%v: set by flag", o.ShellJob))
	}
	if req.GhostLimit > 0 {
		o.GhostLimit = req.GhostLimit
	}
	if req.NetworkLock != criu.NetworkLockAuto {
		o.NetworkLock = req.NetworkLock
	} else if !o.TCPEstablished {
		o.NetworkLock = criu.NetworkLockSkip // nothing to lock
	}
	return o, reasons
}

func effectiveLock(l criu.NetworkLock) criu.NetworkLock {
	if l == criu.NetworkLockAuto {
		return criu.NetworkLockNFTables
	}
	return l
}

// ArchivePath picks a new archive path that does not exist yet: exact
// when it is set (refused if it exists), else a new name for name at t in
// dir (created 0700 if missing). Process and container dumps share it.
func ArchivePath(dir, exact, name string, t time.Time) (string, error) {
	if exact != "" {
		if _, err := os.Lstat(exact); err == nil {
			return "", fmt.Errorf("%w: %s already exists", ErrInvalidInput, exact)
		}
		return exact, nil
	}
	if dir == "" {
		return "", fmt.Errorf("%w: no directory for the archive (use -d or set shared_storage.dump_storage_dir)", ErrInvalidInput)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return "", fmt.Errorf("%w: %s is not a directory", ErrInvalidInput, dir)
	}
	if err := syscall.Access(dir, 2 /* W_OK */); err != nil {
		return "", fmt.Errorf("%w: cannot write to %s: %v", ErrInvalidInput, dir, err)
	}
	for n := 0; n < 1000; n++ {
		p := filepath.Join(dir, ArchiveName(name, t, n))
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			return p, nil
		}
	}
	return "", fmt.Errorf("no free archive name in %s", dir)
}

func sumSizes(files []archive.FileSource) int64 {
	var n int64
	for _, f := range files {
		n += f.Meta.Size
	}
	return n
}

// ownPIDNamespace reports whether pid lives in another PID namespace than
// cedana: then its restore creates a new namespace and cannot clash with
// PIDs in use here.
func ownPIDNamespace(pid int) bool {
	theirs, ours := proc.Link(pid, "ns/pid"), proc.Link(os.Getpid(), "ns/pid")
	return theirs != "" && ours != "" && theirs != ours
}
