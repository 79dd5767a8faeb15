package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/storage"
)

// RestoreRequest asks to bring a checkpoint back.
type RestoreRequest struct {
	// Path is the archive. It is only read, never modified or removed.
	Path string
	// Storage, if set, holds the archive as object Key (Path then only
	// names it in messages and hooks; see storage.Location).
	Storage storage.Backend
	Key     string
	// ReplaceFiles writes the archived copy of carried files over files
	// that changed since the dump (the current file is kept as a backup).
	ReplaceFiles bool
	// PIDWait overrides Settings.PIDWait when > 0.
	PIDWait time.Duration
	// TTY is the terminal a shell job comes back on (the restoring user's).
	// Required when the checkpointed tree was attached to a terminal.
	TTY *os.File
	// Progress, if set, receives progress reports.
	Progress Progress
	// HookEnv is added to the environment of hook scripts.
	HookEnv []string
	// LeaveStopped leaves the restored tree stopped: the caller resumes
	// it (SIGCONT to every task) once it may run, as a migration does
	// after the job's ownership moved to this node.
	LeaveStopped bool
	// LazyPageServer (host:port) restores the tree before its memory
	// (CRIU lazy pages over userfaultfd): the memory comes from that
	// page server, a lazy migration's source (DumpRequest.Lazy), while
	// the tree runs. RestoreResult.Lazy pulls it.
	LazyPageServer string
}

// RestoreResult describes a restored tree.
type RestoreResult struct {
	// PID is the restored tree's root.
	PID int
	// Manifest is the archive's manifest.
	Manifest *archive.Manifest
	// FilesWritten lists carried files put back on disk.
	FilesWritten []string
	// Timings of each phase.
	ExtractTime, CRIUTime, Total time.Duration
	// LogPath is CRIU's log.
	LogPath string
	// Warnings are problems that did not fail the restore (a post-restore hook).
	Warnings []string
	// Lazy is the lazy-pages daemon still pulling the tree's memory,
	// with RestoreRequest.LazyPageServer. If it fails before every page
	// arrived the tree must not run on: the caller kills it.
	Lazy *criu.LazyServer
}

// Restore verifies the archive at req.Path and restores its process tree,
// detached from the caller. Nothing is restored or written outside the
// private staging directory until every entry has been verified: when the
// memory pages stream into CRIU, their digests are checked before CRIU can
// finish (see archive.Reader.StreamEntry), and before any carried file is
// written to the host.
func (s *Service) Restore(ctx context.Context, req RestoreRequest) (*RestoreResult, error) {
	start := time.Now()
	go s.criu.Version() // ask CRIU (cached) while the archive is opened
	prog := req.Progress
	if prog == nil {
		prog = NoProgress{}
	}
	r, stagingParent, err := s.openArchive(ctx, req.Storage, req.Key, req.Path) // storage wiring (remote.go)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	m := r.Manifest
	if err := s.CheckCompatible(m); err != nil {
		return nil, err
	}
	if len(m.Options.ExternalTTYs) > 0 && req.TTY == nil {
		tty := ""
		if m.Processes[0].TTY != "" {
			tty = " (" + m.Processes[0].TTY + ")"
		}
		return nil, fmt.Errorf("%w: %s was attached to a terminal%s when it was checkpointed; run the restore from a terminal, where it will come back", ErrInvalidInput, m.Processes[0].Name, tty)
	}

	// Streamed: the memory pages go from the archive into CRIU through
	// pipes, verified on the way (see archive.Reader.StreamEntry); every
	// other entry is extracted and verified before CRIU starts.
	if m.Options.LazyPages && req.LazyPageServer == "" {
		return nil, fmt.Errorf("%w: %s holds no memory pages: it is the first half of a lazy migration, restored only by the lazy restore that pulled its memory from the source", ErrInvalidInput, req.Path)
	}
	lazy := req.LazyPageServer != ""
	stream := s.set.Stream && m.Options.Streamable && pagesSize(m) >= streamMinBytes && !lazy
	staging, err := s.Stage(r, stream, "", stagingParent, req.Path, prog)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(staging)
	extractTime := time.Since(start)

	var verified func() error // the streamed entries, before the host changes
	if stream {
		verified = func() error {
			for _, e := range m.Entries {
				if streamedEntry(r, e.Name) {
					if err := r.Verified(e.Name); err != nil {
						return fmt.Errorf("%s: %w (nothing was restored)", req.Path, err)
					}
				}
			}
			return nil
		}
	}
	wait := s.set.PIDWait
	if req.PIDWait > 0 {
		wait = req.PIDWait
	}
	if !m.PIDNamespace {
		if err := waitPIDsFree(ctx, m.Processes, wait); err != nil {
			return nil, err
		}
	}

	work, err := s.WorkDir("restore", m.Processes[0].Name, start)
	if err != nil {
		return nil, err
	}
	o := m.Options
	ropts := criu.RestoreOptions{
		ImagesDir:      filepath.Join(staging, "images"),
		LogDir:         work,
		LogFile:        "restore.log",
		TCPEstablished: o.TCPEstablished,
		ShellJob:       o.ShellJob,
		ExtUnixSockets: o.ExtUnixSockets,
		FileLocks:      o.FileLocks,
		LinkRemap:      o.LinkRemap,
		NetworkLock:    criu.NetworkLock(o.NetworkLock),
		Detach:         true,
		LeaveStopped:   req.LeaveStopped,
	}
	// The tree stays stopped until its POSIX locks are checked (and,
	// where CRIU dropped them, taken again): see retakeLocks.
	locks := posixLocks(m)
	if len(locks) > 0 {
		ropts.LeaveStopped = true
		if err := checkLockConflicts(locks); err != nil {
			return nil, fmt.Errorf("restore not started: %w", err)
		}
	}
	if len(m.Options.ExternalTTYs) > 0 {
		ropts.TTYs = map[string]*os.File{}
		for _, key := range m.Options.ExternalTTYs {
			ropts.TTYs[key] = req.TTY
		}
	}
	if err := runHook(ctx, "pre-restore", s.set.Hooks.PreRestore, m.RootPID, req.Path, req.HookEnv); err != nil {
		return nil, fmt.Errorf("restore not started: %w", err)
	}
	// The host changes only now, once nothing else can refuse the
	// restore, and is put back as it was if CRIU fails.
	put, err := putBackFiles(staging, m.CarriedFiles, req.ReplaceFiles, verified)
	if err != nil {
		return nil, fmt.Errorf("restore not started: %w", err)
	}
	undo := func(err error) error {
		if left := put.undo(); len(left) > 0 {
			return fmt.Errorf("%w; the carried files it wrote could not all be removed again: %s", err, strings.Join(left, "; "))
		}
		return err
	}
	s.log.Info("restoring", "archive", req.Path, "root_pid", m.RootPID, "staging", staging, "stream", stream)
	prog.Start("restoring", 0)
	criuStart := time.Now()
	var (
		res        *criu.RestoreResult
		lazyServer *criu.LazyServer
	)
	if lazy {
		ropts.Lazy, ropts.LazyPageServer = true, req.LazyPageServer
		res, lazyServer, err = s.criu.RestoreDetached(ropts)
	} else if stream {
		res, err = s.criu.RestoreStreamed(ropts, &archiveImages{r: r, dir: ropts.ImagesDir})
		if res != nil && err != nil {
			// CRIU restored the tree although an image could not be
			// served whole: never leave it running.
			killRestored(m, res.PID)
			res = nil
		}
	} else {
		res, err = s.criu.Restore(ropts)
	}
	prog.Done()
	if err != nil {
		if errors.Is(err, archive.ErrCorrupt) {
			return nil, undo(fmt.Errorf("%s: %w (nothing was restored)", req.Path, err))
		}
		return nil, undo(fmt.Errorf("restore of %s failed: %w", req.Path, err))
	}
	if len(locks) > 0 {
		var n int
		host, err := hostPIDs(res.PID)
		if err == nil {
			n, err = retakeLocks(host, locks, s.fault)
		}
		if err == nil && !req.LeaveStopped {
			err = resumeRestored(m, host)
		}
		if err != nil {
			killRestored(m, res.PID)
			if lazyServer != nil {
				lazyServer.Stop()
			}
			return nil, undo(fmt.Errorf("restore of %s failed: %w (the restored tree was killed rather than run without its locks; the archive is unchanged)", req.Path, err))
		}
		if n > 0 {
			s.log.Info("took again the POSIX locks CRIU dropped", "locks", n, "of", len(locks))
		}
	}
	out := &RestoreResult{
		PID: res.PID, Manifest: m, FilesWritten: put.written,
		ExtractTime: extractTime, CRIUTime: time.Since(criuStart), Total: time.Since(start),
		LogPath: res.LogPath, Lazy: lazyServer,
	}
	s.log.Info("restored", "pid", out.PID, "verify_extract", extractTime, "criu", out.CRIUTime, "total", out.Total)
	if err := runHook(ctx, "post-restore", s.set.Hooks.PostRestore, res.PID, req.Path, req.HookEnv); err != nil {
		out.Warnings = append(out.Warnings, err.Error())
	}
	return out, nil
}

// pagesSize is the total size of the memory pages images.
func pagesSize(m *archive.Manifest) int64 {
	var n int64
	for _, e := range m.Entries {
		if name, ok := strings.CutPrefix(e.Name, archive.ImagesPrefix); ok && isPagesImage(name) {
			n += e.Size
		}
	}
	return n
}

// killRestored ends a tree that CRIU restored but that must not run.
func killRestored(m *archive.Manifest, root int) {
	if root > 0 {
		_ = syscall.Kill(root, syscall.SIGKILL) // a namespace's init takes its namespace along
	}
	if !m.PIDNamespace {
		for _, p := range m.Processes {
			_ = syscall.Kill(p.PID, syscall.SIGKILL) // restored with their old PIDs
		}
	}
}

// CheckCompatible refuses archives this machine cannot restore: another
// architecture, an unknown network lock, images of a newer CRIU. Process
// and container restores share it.
func (s *Service) CheckCompatible(m *archive.Manifest) error {
	if m.Host.Arch != "" && m.Host.Arch != runtime.GOARCH {
		return fmt.Errorf("%w: the checkpoint was taken on %s, this machine is %s", ErrInvalidInput, m.Host.Arch, runtime.GOARCH)
	}
	if !criu.NetworkLock(m.Options.NetworkLock).Valid() {
		return fmt.Errorf("%w: unknown network lock %q in manifest", archive.ErrCorrupt, m.Options.NetworkLock)
	}
	v, err := s.criu.CheckVersion()
	if err != nil {
		return err
	}
	// Image formats only grow; an older CRIU may not understand images
	// from a newer one. Compare major.minor.
	if m.CRIU.Version/100 > v/100 {
		return fmt.Errorf("%w: the checkpoint was made by CRIU %s but this machine has CRIU %s; install CRIU ≥ %s (make setup)",
			ErrInvalidInput, m.CRIU.VersionString, criu.FormatVersion(v), m.CRIU.VersionString)
	}
	return nil
}

// waitPIDsFree waits until no PID of the tree is taken, for at most wait.
// A dumped process's PID stays taken until its parent reaps it, which on
// hosts without a reaping init can take a while.
func waitPIDsFree(ctx context.Context, procs []archive.Process, wait time.Duration) error {
	pids := make([]int, len(procs))
	for i, p := range procs {
		pids[i] = p.PID
	}
	deadline := time.Now().Add(wait)
	for {
		holders := proc.PIDHolders(pids)
		if len(holders) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			for _, pid := range pids {
				if st := holders[pid]; st != nil {
					return pidBusyError(pid, st)
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// pidBusyError explains who holds pid and what to do about it.
func pidBusyError(pid int, st *proc.Stat) error {
	who := st.Comm
	if cmd := strings.Join(proc.Cmdline(st.PID), " "); cmd != "" {
		who = cmd
	}
	switch {
	case st.PID == pid && st.State == 'Z':
		return fmt.Errorf("%w: PID %d (%s) is a zombie that its parent (PID %d) has not reaped yet; the restore needs that PID back. Wait for the parent to reap it, or end the parent", ErrPIDBusy, pid, st.Comm, st.PPID)
	case st.PID == pid:
		return fmt.Errorf("%w: PID %d is used by a running process (%s); the checkpointed process needs that PID back. Stop it (kill %d) if it is the original, or restore on another machine", ErrPIDBusy, pid, who, pid)
	default:
		state := "running"
		if st.State == 'Z' {
			state = fmt.Sprintf("a zombie not yet reaped by PID %d", st.PPID)
		}
		return fmt.Errorf("%w: PID %d is still the process group or session ID of PID %d (%s, %s); the restore needs it free. Wait for that process to end (or end it)", ErrPIDBusy, pid, st.PID, who, state)
	}
}

var errUnsafeFile = errors.New("refusing to write carried file")
