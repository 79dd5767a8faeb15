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
	s.pruneWorkDirs(time.Now())
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
