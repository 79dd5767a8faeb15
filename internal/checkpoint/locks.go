package checkpoint

import (
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/fault"
	"github.com/cedana/cedana/internal/inject"
	"github.com/cedana/cedana/internal/proc"
	"golang.org/x/sys/unix"
)

// heldLock is a POSIX lock a dumped process held, and the descriptor
// through which a restore gives it back.
type heldLock struct {
	pid, fd int // the PID inside the tree's own PID namespace, and the descriptor
	path    string
	lock    proc.POSIXLock
}

// posixLocks lists the POSIX locks of the manifest's processes, once per
// process and lock (fdinfo lists a process's lock under every descriptor
// of the file).
func posixLocks(m *archive.Manifest) []heldLock {
	if !m.Options.FileLocks {
		return nil
	}
	type key struct {
		pid  int
		lock proc.POSIXLock
	}
	var out []heldLock
	seen := map[key]bool{}
	for _, p := range m.Processes {
		for _, f := range p.Files {
			for _, line := range f.Locks {
				l, ok := proc.ParsePOSIXLock(line)
				if !ok {
					continue
				}
				if k := (key{p.PID, l}); !seen[k] {
					seen[k] = true
					out = append(out, heldLock{pid: innerPID(p), fd: f.FD, path: f.Path, lock: l})
				}
			}
		}
	}
	return out
}

// retakeLocks makes every process of the restored tree (host: its PIDs,
// see hostPIDs) hold the POSIX locks it held when dumped. CRIU re-takes them
// before it maps the process's memory, and mapping a file the process has
// locked closes a descriptor of that file, which drops the process's
// POSIX locks on it (see package inject); SQLite in WAL mode is such a
// program. The tree must be stopped; it stays stopped. It returns how
// many locks it had to take again, or why one could not be (then the
// tree must not run: its locks no longer protect what they did).
func retakeLocks(host map[int]int, locks []heldLock, faults fault.Injector) (int, error) {
	n := 0
	for _, h := range locks {
		pid, ok := host[h.pid]
		if !ok {
			return n, fmt.Errorf("PID %d, which held a lock on %s (%s), is not in the restored tree", h.pid, h.path, h.lock)
		}
		if proc.HoldsPOSIXLock(pid, h.fd, h.lock) {
			continue
		}
		err := faults.At(fault.RetakeLock)
		if err == nil {
			err = inject.SetPOSIXLock(pid, h.fd, h.lock.Flock())
		}
		if err != nil {
			return n, fmt.Errorf("CRIU restored PID %d without its lock on %s (%s), and it could not be taken again: %w", h.pid, h.path, h.lock, err)
		}
		if !proc.HoldsPOSIXLock(pid, h.fd, h.lock) {
			return n, fmt.Errorf("CRIU restored PID %d without its lock on %s (%s), and taking it again did not show in /proc", h.pid, h.path, h.lock)
		}
		n++
	}
	return n, nil
}

// innerPID is p's PID inside the tree's own PID namespace (hostPIDs'
// keys).
func innerPID(p archive.Process) int {
	if p.NSPID > 0 {
		return p.NSPID
	}
	return p.PID
}

// hostPIDs maps the PIDs of the tree rooted at root, as its own PID
// namespace sees them (the manifest's), to this namespace's.
func hostPIDs(root int) (map[int]int, error) {
	tree, err := proc.Tree(root)
	if err != nil {
		return nil, fmt.Errorf("read the restored tree of PID %d: %w", root, err)
	}
	out := make(map[int]int, len(tree))
	for _, p := range tree {
		st, err := proc.ReadStatus(p)
		if err != nil {
			return nil, fmt.Errorf("read the restored tree of PID %d: %w", root, err)
		}
		out[st.InnerPID] = p
	}
	return out, nil
}

// resumeRestored sends SIGCONT to every process of the restored tree
// (host: its PIDs, see hostPIDs), which a restore left stopped, but those
// the manifest says were stopped when dumped (CRIU restores them stopped,
// and so must this).
func resumeRestored(m *archive.Manifest, host map[int]int) error {
	keep := map[int]bool{}
	for _, p := range m.Processes {
		if !p.Stopped {
			continue
		}
		if h, ok := host[innerPID(p)]; ok {
			keep[h] = true
		}
	}
	var failed []string
	for _, p := range host {
		if keep[p] {
			continue
		}
		if err := syscall.Kill(p, syscall.SIGCONT); err != nil && err != syscall.ESRCH {
			failed = append(failed, fmt.Sprintf("PID %d: %v", p, err))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("resume the restored tree: %s", strings.Join(failed, "; "))
	}
	return nil
}

// checkLockConflicts refuses a restore while another process holds a
// lock that conflicts with one the tree held: CRIU takes the tree's
// locks waiting (F_SETLKW), so the restore would hang until that process
// lets go. Files that are gone are left to CRIU, which explains them.
func checkLockConflicts(locks []heldLock) error {
	for _, h := range locks {
		f, err := os.Open(h.path)
		if err != nil {
			continue
		}
		lk := h.lock.Flock()
		err = unix.FcntlFlock(f.Fd(), unix.F_GETLK, &lk)
		f.Close()
		if err == nil && lk.Type != unix.F_UNLCK {
			return fmt.Errorf("%w: PID %d holds a lock on %s that conflicts with one the checkpoint's PID %d held (%s); CRIU would wait for it to let go. Stop PID %d (e.g. another program using the same database), then restore again",
				ErrInvalidInput, lk.Pid, h.path, h.pid, h.lock, lk.Pid)
		}
	}
	return nil
}
