package cluster

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cedana/cedana/internal/proc"
)

// The fence watchdog (docs/cluster.md, "daemon killed, jobs keep
// running"): a small process of its own, started by the daemon, that
// stops a node's cluster jobs at their lease deadlines when the daemon
// can no longer do it — killed, frozen (SIGSTOP) or hung. The daemon
// writes it, every fencer round, one JSON line: each held job's processes
// and cgroup with the time left before its deadline. The watchdog stops
// (SIGSTOP) every process of a job whose deadline passed without a newer
// line for it, a little after the daemon's own fencer would have. A
// daemon that starts again ends the old watchdog first, then decides what
// the stopped jobs become (rule 5: resumed if still its own, killed
// otherwise).

// WatchdogCommand is the hidden argument that runs the watchdog
// (cmd/cedana dispatches it before parsing flags).
const WatchdogCommand = "fence-watchdog"

// WatchJob is one job in a watchdog update.
type WatchJob struct {
	Job    string `json:"job"`
	PIDs   []int  `json:"pids,omitempty"`
	Cgroup string `json:"cgroup,omitempty"` // absolute cgroup v2 directory
	// LeftMS is the time left before the job must be stopped.
	LeftMS int64 `json:"left_ms"`
}

// RunWatchdog is the watchdog's main: it reads updates from stdin until
// EOF, stops jobs whose deadline passes, and exits once stdin is closed
// and no deadline is left. It returns the exit code.
func RunWatchdog(args []string) int {
	if len(args) > 0 && args[0] == "--help" {
		fmt.Fprintln(os.Stderr, "fence-watchdog is started by `cedana daemon start` in cluster mode; it is not a user command")
		return 2
	}
	w := &watchdog{jobs: map[string]watched{}}
	done := make(chan struct{})
	go func() {
		w.read(os.Stdin)
		close(done)
	}()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			done = nil // keep fencing what is left
		case <-t.C:
		}
		if w.fence(time.Now()) == 0 && done == nil {
			return 0
		}
	}
}

type watched struct {
	WatchJob
	deadline time.Time
	stopped  bool
	// starts holds the start time of each PID stopped (from the update,
	// not the cgroup), so that stopping it again never hits a process
	// that reused the PID; restopped is when that was last done.
	starts    map[int]uint64
	restopped time.Time
}

// restopEvery is how often a job past its deadline is stopped again:
// something may have resumed it (CRIU, resuming a tree after a dump that
// failed; a user's SIGCONT) while the daemon's own fencer cannot act.
const restopEvery = 250 * time.Millisecond

type watchdog struct {
	mu   sync.Mutex
	jobs map[string]watched
}

// read applies updates: each line replaces the whole set of jobs.
func (w *watchdog) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var jobs []WatchJob
		if err := json.Unmarshal(sc.Bytes(), &jobs); err != nil {
			continue
		}
		now := time.Now()
		next := make(map[string]watched, len(jobs))
		for _, j := range jobs {
			next[j.Job] = watched{WatchJob: j, deadline: now.Add(time.Duration(j.LeftMS) * time.Millisecond)}
		}
		w.mu.Lock()
		w.jobs = next
		w.mu.Unlock()
	}
}

// fence stops every job past its deadline and returns how many jobs are
// still waiting for theirs.
func (w *watchdog) fence(now time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	waiting := 0
	for id, j := range w.jobs {
		if j.stopped {
			// Until a newer update: whatever resumed it is stopped again.
			if now.Sub(j.restopped) >= restopEvery {
				stopAll(j.WatchJob, j.starts)
				j.restopped = now
				w.jobs[id] = j
			}
			continue
		}
		if now.Before(j.deadline) {
			waiting++
			continue
		}
		j.starts = map[int]uint64{}
		for _, p := range j.PIDs {
			if st, ok := startTime(p); ok {
				j.starts[p] = st
			}
		}
		n := stopAll(j.WatchJob, nil)
		j.stopped, j.restopped = true, now
		w.jobs[id] = j
		fmt.Fprintf(os.Stderr, "fence-watchdog: job %s: no lease renewal from the daemon before its deadline: stopped %d process(es)\n", id, n)
	}
	return waiting
}

// startTime is the start time of process pid.
func startTime(pid int) (uint64, bool) {
	st, err := proc.ReadStat(pid)
	if err != nil {
		return 0, false
	}
	return st.StartTime, true
}

// stopAll sends SIGSTOP to the job's processes: those of its cgroup, and
// the PIDs of the last update — with starts not nil, only those of them
// that still have the start time it gives (a PID not in it is skipped).
func stopAll(j WatchJob, starts map[int]uint64) int {
	var pids []int
	for _, p := range j.PIDs {
		if starts != nil {
			if want, ok := starts[p]; !ok {
				continue
			} else if got, ok := startTime(p); !ok || got != want {
				continue
			}
		}
		pids = append(pids, p)
	}
	if j.Cgroup != "" {
		if b, err := os.ReadFile(filepath.Join(j.Cgroup, "cgroup.procs")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if p, err := strconv.Atoi(f); err == nil {
					pids = append(pids, p)
				}
			}
		}
	}
	n := 0
	for _, p := range pids {
		if p > 1 && syscall.Kill(p, syscall.SIGSTOP) == nil {
			n++
		}
	}
	return n
}

// Watchdog is the daemon's handle on its watchdog process.
type Watchdog struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	pidFile string
}

// StartWatchdog ends the watchdog a previous daemon of this state
// directory left (found by its PID file, checked by its command line) and
// starts a new one from the executable exe. Its stderr goes to logw.
func StartWatchdog(exe, stateDir string, logw io.Writer) (*Watchdog, error) {
	pidFile := filepath.Join(stateDir, "fence-watchdog.pid")
	EndWatchdog(pidFile)
	cmd := exec.Command(exe, WatchdogCommand)
	cmd.Stdout, cmd.Stderr = logw, logw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the fence watchdog: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("record the fence watchdog's PID: %w", err)
	}
	return &Watchdog{cmd: cmd, stdin: in, pidFile: pidFile}, nil
}

// EndWatchdog kills the watchdog whose PID pidFile holds, if that PID is
// still a watchdog.
func EndWatchdog(pidFile string) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), WatchdogCommand) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 200; i++ {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = os.Remove(pidFile)
}

// Update sends the watchdog the jobs it guards now.
func (w *Watchdog) Update(jobs []WatchJob) error {
	if jobs == nil {
		jobs = []WatchJob{}
	}
	b, err := json.Marshal(jobs)
	if err != nil {
		return err
	}
	_, err = w.stdin.Write(append(b, '\n'))
	return err
}

// Close leaves the watchdog on its own when the daemon stops: the jobs
// keep running, but nobody renews their leases any more, so the watchdog
// still stops each at its deadline unless a daemon of this state
// directory starts in time (it ends this watchdog and takes the jobs back,
// rule 5). It exits once every deadline has passed.
func (w *Watchdog) Close() {
	_ = w.stdin.Close()
}
