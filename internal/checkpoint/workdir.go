package checkpoint

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Every CRIU operation, of a process or a container, gets a work
// directory of its own under Settings.LogDir, named
// "<op>-<name>-<UTC time>" (e.g. "dump-redis-server-20261205T083222.665318657Z",
// "runc-checkpoint-job1-…"): CRIU writes its log there and, for a dump,
// its stats-dump file, which concurrent dumps sharing one directory
// would overwrite. The directories are pruned when a new one is made:
// beyond Settings.KeepLogs of them (newest kept), and those older than
// Settings.MaxLogAge — except those touched within pruneGrace, which an
// operation may still be using.

// pruneGrace protects recent work directories from pruning: another
// cedana process may still be writing them.
const pruneGrace = 10 * time.Minute

// pruneEvery spaces the pruning of the whole log directory: it reads every
// work directory, and a daemon checkpointing many jobs creates one every
// few hundred milliseconds. Periodic checkpoints prune their own group at
// once (pruneGroup).
const pruneEvery = time.Minute

// failedMarker is a file a failed dump leaves in its work directory: a
// group's pruning keeps those (see DumpRequest.LogGroup).
const failedMarker = "FAILED"

// pruneDue reports whether the log directory is due for pruning, and
// records that it is being pruned now.
func (s *Service) pruneDue(now time.Time) bool {
	s.pruneMu.Lock()
	defer s.pruneMu.Unlock()
	if !s.lastPrune.IsZero() && now.Sub(s.lastPrune) < pruneEvery {
		return false
	}
	s.lastPrune = now
	return true
}

// GroupWorkDir returns the work directory of the next operation of a
// group whose operations never overlap (one job's periodic dumps): one of
// keep slot directories "<op>-<group>-slot<N>" under the log directory,
// the least recently used, reused as it is (CRIU truncates its log and
// rewrites stats-dump). Reusing them keeps the CRIU logs of the last keep
// successes without creating and removing a directory per checkpoint,
// which costs the daemon more CPU than anything else it does around an
// idle job's dump. A failed operation's directory is renamed away with
// KeepFailedWorkDir, so that its log stays.
func (s *Service) GroupWorkDir(op, group string, keep int) (string, error) {
	root := s.set.LogDir
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", fmt.Errorf("create log dir: %w", err)
	}
	if now := time.Now(); s.pruneDue(now) {
		s.pruneWorkDirs(now)
	}
	var (
		pick   string
		oldest time.Time
	)
	for n := range max(1, keep) {
		dir := filepath.Join(root, fmt.Sprintf("%s-%s-slot%d", op, SanitizeName(group), n))
		fi, err := os.Lstat(dir)
		if err != nil {
			pick = dir // a free slot
			break
		}
		if pick == "" || fi.ModTime().Before(oldest) {
			pick, oldest = dir, fi.ModTime()
		}
	}
	if err := os.Mkdir(pick, 0o700); err != nil && !os.IsExist(err) {
		return "", fmt.Errorf("create work dir: %w", err)
	}
	now := time.Now()
	if err := os.Chtimes(pick, now, now); err != nil {
		return "", fmt.Errorf("work dir: %w", err)
	}
	return pick, nil
}

// KeepFailedWorkDir renames a failed operation's slot directory (see
// GroupWorkDir) to "<slot>-failed-<UTC time>", where the general pruning
// (KeepLogs, MaxLogAge) finds it, and leaves a failedMarker in it.
func (s *Service) KeepFailedWorkDir(dir string, cause error) string {
	markFailed(dir, cause)
	to := fmt.Sprintf("%s-failed-%s", dir, time.Now().UTC().Format("20060102T150405.000000000Z"))
	if err := os.Rename(dir, to); err != nil {
		s.log.Warn("keeping the CRIU log of a failed operation", "path", dir, "error", err)
		return dir
	}
	return to
}

// markFailed leaves a failedMarker in a failed operation's work directory.
func markFailed(work string, cause error) {
	_ = os.WriteFile(filepath.Join(work, failedMarker), []byte(cause.Error()+"\n"), 0o600)
}

// workPrefixes are the name prefixes of the work directories (and of the
// single log files of older versions) that pruning may remove.
var workPrefixes = []string{"dump-", "restore-", "runc-", "docker-"}

// WorkDir creates a new work directory for one CRIU operation under the
// log directory, after pruning old ones, and returns its path. op names
// the operation ("dump", "runc-checkpoint"…), name what it works on.
func (s *Service) WorkDir(op, name string, t time.Time) (string, error) {
	root := s.set.LogDir
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", fmt.Errorf("create log dir: %w", err)
	}
	if now := time.Now(); s.pruneDue(now) {
		s.pruneWorkDirs(now)
	}
	base := fmt.Sprintf("%s-%s-%s", op, SanitizeName(name), t.UTC().Format("20060102T150405.000000000Z"))
	for n := 0; n < 1000; n++ {
		dir := filepath.Join(root, base)
		if n > 0 {
			dir = fmt.Sprintf("%s-%d", dir, n)
		}
		err := os.Mkdir(dir, 0o700)
		if err == nil {
			return dir, nil
		}
		if !os.IsExist(err) {
			return "", fmt.Errorf("create work dir: %w", err)
		}
	}
	return "", fmt.Errorf("no free work directory name for %s in %s", base, root)
}

// pruneWorkDirs removes the work directories beyond the newest KeepLogs
// and those older than MaxLogAge, sparing those modified within
// pruneGrace of now.
func (s *Service) pruneWorkDirs(now time.Time) {
	keep, maxAge := s.set.KeepLogs, s.set.MaxLogAge
	ents, err := os.ReadDir(s.set.LogDir)
	if err != nil {
		return
	}
	type item struct {
		path string
		mod  time.Time
	}
	var items []item
	for _, e := range ents {
		if !hasWorkPrefix(e.Name()) || !(e.IsDir() || e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".log")) {
			continue
		}
		p := filepath.Join(s.set.LogDir, e.Name())
		items = append(items, item{p, lastModified(p)})
	}
	slices.SortFunc(items, func(a, b item) int { return b.mod.Compare(a.mod) }) // newest first
	for i, it := range items {
		if now.Sub(it.mod) < pruneGrace {
			continue
		}
		if (keep > 0 && i >= keep) || (maxAge > 0 && now.Sub(it.mod) > maxAge) {
			if err := os.RemoveAll(it.path); err != nil {
				s.log.Warn("pruning CRIU logs", "path", it.path, "error", err)
			}
		}
	}
}

func hasWorkPrefix(name string) bool {
	for _, p := range workPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// lastModified is the newest modification time of path and, for a
// directory, of its entries (CRIU appends to a log inside it).
func lastModified(path string) time.Time {
	fi, err := os.Lstat(path)
	if err != nil {
		return time.Time{}
	}
	t := fi.ModTime()
	if !fi.IsDir() {
		return t
	}
	_ = filepath.WalkDir(path, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := d.Info(); err == nil && info.ModTime().After(t) {
			t = info.ModTime()
		}
		return nil
	})
	return t
}
