package checkpoint

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cedana/cedana/internal/proc"
)

// ErrLeftStopped means a failed dump could not resume the tree it froze:
// some of its processes are still stopped (state T). The error names
// them and the command that resumes them.
var ErrLeftStopped = errors.New("processes left stopped")

// A dump freezes the tree twice over: CRIU seizes it while it dumps, and
// with --leave-stopped leaves it stopped (SIGSTOP) once the images are
// out, so that the archive can be made durable before the tree is
// killed. Whatever fails after CRIU started — CRIU itself, an image on
// its way to the archive, the archive's fsync or rename — must leave the
// tree running again. CRIU resumes the tree itself when it fails, but not
// when it succeeded and what came after it failed; so after any failure
// the engine resumes, itself, every process of the tree that is stopped
// now and was not stopped before the dump (a process a user had stopped
// stays stopped), and checks that it runs again.

// stoppedBefore returns the processes of the tree that are stopped before
// the dump starts: the resume after a failure leaves them alone.
func stoppedBefore(s *snapshot) map[int]bool {
	out := map[int]bool{}
	for _, p := range s.processes {
		if st, err := proc.ReadStat(p.PID); err == nil && st.StartTime == s.startTimes[p.PID] && isStopped(st.State) {
			out[p.PID] = true
		}
	}
	return out
}

func isStopped(state byte) bool { return state == 'T' || state == 't' }

// resumeWait bounds how long a resumed process may take to leave the
// stopped state before it is reported as left stopped.
const resumeWait = 2 * time.Second

// resumeTree resumes the tree rooted at root after a failed dump: every
// process of snap (same PID and start time) and every process of the
// tree as it is now that is stopped, except those stopped before the
// dump. It returns an error wrapping ErrLeftStopped naming the processes
// that are still stopped after resumeWait.
func resumeTree(root int, snap *snapshot, before map[int]bool) error {
	cands := map[int]uint64{} // PID → start time (0: not in the snapshot)
	for _, p := range snap.processes {
		cands[p.PID] = snap.startTimes[p.PID]
	}
	if pids, err := proc.Tree(root); err == nil {
		for _, pid := range pids {
			if _, ok := cands[pid]; !ok {
				cands[pid] = 0 // forked after the snapshot, frozen with the tree
			}
		}
	}
	var resumed []int
	var errs []error
	for pid, start := range cands {
		if before[pid] {
			continue
		}
		st, err := proc.ReadStat(pid)
		if err != nil || (start != 0 && st.StartTime != start) || !isStopped(st.State) {
			continue // gone, a newcomer with a recycled PID, or running
		}
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("SIGCONT to PID %d: %w", pid, err))
		}
		resumed = append(resumed, pid)
	}
	stopped := stillStopped(resumed, cands, resumeWait)
	if len(stopped) == 0 {
		return nil
	}
	slices.Sort(stopped)
	ids := make([]string, len(stopped))
	for i, pid := range stopped {
		ids[i] = strconv.Itoa(pid)
	}
	list := strings.Join(ids, " ")
	return fmt.Errorf("%w: PIDs %s are still stopped (state T) after the failed dump; resume them with `kill -CONT %s`%s",
		ErrLeftStopped, list, list, joinErrs(errs))
}

// stillStopped waits up to d for the processes pids to leave the stopped
// state and returns those that did not.
func stillStopped(pids []int, starts map[int]uint64, d time.Duration) []int {
	deadline := time.Now().Add(d)
	for {
		var out []int
		for _, pid := range pids {
			st, err := proc.ReadStat(pid)
			if err == nil && (starts[pid] == 0 || st.StartTime == starts[pid]) && isStopped(st.State) {
				out = append(out, pid)
			}
		}
		if len(out) == 0 || time.Now().After(deadline) {
			return out
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func joinErrs(errs []error) string {
	if len(errs) == 0 {
		return ""
	}
	return " (" + errors.Join(errs...).Error() + ")"
}

// kill ends every task of a dumped tree.
func kill(s *snapshot) {
	for _, p := range s.processes {
		_ = signalIfSame(p.PID, s.startTimes[p.PID], syscall.SIGKILL)
	}
}

// stopAll queues SIGSTOP for every task of the tree (see the lazy dump in
// dumpOnce).
func stopAll(s *snapshot) {
	for _, p := range s.processes {
		_ = signalIfSame(p.PID, s.startTimes[p.PID], syscall.SIGSTOP)
	}
}

// signalIfSame signals pid only if it is still the process that started
// at startTime, never a newcomer that reused the PID.
func signalIfSame(pid int, startTime uint64, sig syscall.Signal) error {
	st, err := proc.ReadStat(pid)
	if err != nil {
		return nil // gone already
	}
	if st.StartTime != startTime {
		return nil
	}
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to PID %d: %w", sig, pid, err)
	}
	return nil
}

// StoppedTree is a dumped tree left stopped (DumpRequest.KeepStopped):
// exactly one of Resume or Kill ends its wait.
type StoppedTree struct {
	root   int
	snap   *snapshot
	before map[int]bool
}

// PIDs lists the tree's processes as they were dumped.
func (t *StoppedTree) PIDs() []int {
	out := make([]int, 0, len(t.snap.processes))
	for _, p := range t.snap.processes {
		out = append(out, p.PID)
	}
	return out
}

// Resume lets the tree run again (the checkpoint was not used), as after
// a failed dump; an error wraps ErrLeftStopped.
func (t *StoppedTree) Resume() error { return resumeTree(t.root, t.snap, t.before) }

// Kill ends every task of the tree (never a newcomer that reused a PID)
// and waits up to wait for them to be gone.
func (t *StoppedTree) Kill(wait time.Duration) error {
	kill(t.snap)
	deadline := time.Now().Add(wait)
	for {
		alive := 0
		for _, p := range t.snap.processes {
			if st, err := proc.ReadStat(p.PID); err == nil && st.StartTime == t.snap.startTimes[p.PID] && st.State != 'Z' && st.State != 'X' {
				alive++
			}
		}
		if alive == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d process(es) of the dumped tree of PID %d still exist after SIGKILL", alive, t.root)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
