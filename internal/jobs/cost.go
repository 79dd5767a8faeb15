package jobs

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cedana/cedana/internal/store"
)

// What a checkpoint costs the daemon, next to what it costs CRIU.
//
// CRIU's CPU time comes from the rusage of its process
// (checkpoint.DumpResult.CRIUCPU). The daemon's is the growth of its own
// process's CPU time (every thread) over the checkpoint: it also counts
// whatever else the daemon did meanwhile — another checkpoint, API calls,
// the periodic checks of other jobs — so it is an upper bound. Their
// ratio holds on a busy machine, where wall times do not. Over a window,
// rate(process_cpu_seconds_total) ÷ rate(cedana_checkpoint_cpu_seconds_total{who="criu"})
// is the daemon's whole CPU per unit of CRIU's, without double counting.

// selfCPU is the CPU time (user and system) of the daemon's process.
func selfCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// checkpointCost records the CPU times of a complete checkpoint in the
// metrics and returns them for its event ("" when CRIU's is unknown, as
// for containers).
func (m *Manager) checkpointCost(why string, daemon, criu time.Duration) string {
	if criu <= 0 {
		return ""
	}
	kind := "requested"
	if why == "periodic" {
		kind = "periodic"
	}
	m.metrics.checkpointCPU(kind, daemon, criu)
	return fmt.Sprintf("; CPU: CRIU %s, daemon at most %s (%.1f %% of CRIU's; the whole daemon meanwhile)",
		criu.Round(100*time.Microsecond), daemon.Round(100*time.Microsecond), 100*daemon.Seconds()/criu.Seconds())
}

// periodicLogs is how many CRIU work directories (logs) of successful
// periodic checkpoints are kept per job; those of failures are kept until
// the engine's own pruning (criu.keep_logs, criu.max_log_age).
const periodicLogs = 3

// logGroup groups the CRIU logs of a job's periodic checkpoints, so that
// only their last few successes are kept ("" for other checkpoints).
func logGroup(j *store.Job, why string) string {
	if why != "periodic" {
		return ""
	}
	return "periodic-" + j.ID
}
