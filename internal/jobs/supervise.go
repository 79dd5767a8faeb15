package jobs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cedana/cedana/internal/fault"
	"github.com/cedana/cedana/internal/store"
)

// supervisor is the runtime side of one live job: the goroutine that
// waits for its process to end and, with a periodic policy, the one that
// checkpoints it.
type supervisor struct {
	cancel context.CancelFunc
}

func (s *supervisor) stop() { s.cancel() }

// supervise starts watching j's process (replacing any earlier watch) and
// its periodic checkpoints. child says whether the process is a child of
// this daemon (started or restored by it), so that its exit status can be
// collected.
func (m *Manager) supervise(j *store.Job, child bool) {
	ctx, cancel := context.WithCancel(m.ctx)
	m.mu.Lock()
	if old := m.live[j.ID]; old != nil {
		old.stop()
	}
	m.live[j.ID] = &supervisor{cancel: cancel}
	m.mu.Unlock()

	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.watch(ctx, j.ID, j.PID, j.StartTime, child)
	}()
	if every := j.Policy.CheckpointEvery; every > 0 {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.tick(ctx, j.ID, every)
		}()
	}
}

// unsupervise stops watching a job (killed, or checkpointed and stopped).
func (m *Manager) unsupervise(id string) {
	m.mu.Lock()
	if s := m.live[id]; s != nil {
		s.stop()
		delete(m.live, id)
	}
	m.mu.Unlock()
	m.skips.forget(id)
}

// exitStatus is how a process ended, when that is known: only a parent
// can collect it, so it is unknown for adopted processes and for jobs of
// an earlier daemon.
type exitStatus struct {
	known    bool
	code     int // exit code, or the signal number when signaled
	signaled bool
}

func (s exitStatus) String() string {
	switch {
	case !s.known:
		return "died (exit status unknown: not a child of this daemon)"
	case s.signaled:
		return fmt.Sprintf("killed by signal %d (%s)", s.code, unix.SignalName(unix.Signal(s.code)))
	default:
		return fmt.Sprintf("exited with status %d", s.code)
	}
}

// watch waits, without polling, for the process to end: a pidfd becomes
// readable when its process exits, and Go's netpoller waits for that.
func (m *Manager) watch(ctx context.Context, id string, pid int, st uint64, child bool) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		m.died(id, pid, st, exitStatus{})
		return
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))
	defer f.Close()
	stopped := make(chan struct{})
	defer close(stopped)
	isChild := child
	go func() {
		select {
		case <-ctx.Done():
		case <-stopped:
			return
		}
		if isChild && m.ctx.Err() == nil {
			// Unwatched (killed, dumped), but only we can reap our child:
			// keep waiting until it exits, reporting nothing, so that its
			// PID is freed for a restore.
			select {
			case <-m.ctx.Done():
			case <-stopped:
				return
			}
		}
		_ = f.Close() // unblocks the wait below
	}()
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	var status exitStatus
	err = rc.Read(func(fd uintptr) bool {
		if child {
			s, done, err := reap(int(fd))
			if err == nil && done {
				status = s
				return true
			}
			if errors.Is(err, unix.ECHILD) {
				child = false // reparented; fall back to readiness
			}
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, _ := unix.Poll(fds, 0)
		return n > 0
	})
	if ctx.Err() != nil {
		return
	}
	if err != nil && !status.known {
		m.log.Warn("watch job", "job", id, "pid", pid, "err", err)
	}
	if !status.known && m.containers != nil {
		status = m.containerExit(id)
	}
	m.died(id, pid, st, status)
}

// reap collects the exit status of a child through its pidfd, without
// blocking. done is false while the child runs.
func reap(pidfd int) (exitStatus, bool, error) {
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PIDFD, pidfd, &info, unix.WEXITED|unix.WNOHANG, nil); err != nil {
		return exitStatus{}, false, err
	}
	// siginfo_t for SIGCHLD: si_pid at byte 16, si_status at byte 24.
	raw := (*[128]byte)(unsafe.Pointer(&info))
	if binary.NativeEndian.Uint32(raw[16:20]) == 0 {
		return exitStatus{}, false, nil // still running
	}
	status := int(int32(binary.NativeEndian.Uint32(raw[24:28])))
	const cldExited = 1
	return exitStatus{known: true, code: status, signaled: info.Code != cldExited}, true, nil
}

// died records that a job's process ended on its own and, if the policy
// says so, restores it from its newest checkpoint.
func (m *Manager) died(id string, pid int, st uint64, status exitStatus) {
	var restore bool
	j, err := m.store.UpdateJob(context.Background(), id, func(j *store.Job) error {
		if j.PID != pid || j.StartTime != st || State(j.State) != Running {
			return errStale // expected (a dump or a kill ended it) or old news
		}
		if status.known && !status.signaled && status.code == 0 {
			j.State, j.Error = string(Exited), ""
		} else {
			j.State, j.Error = string(Failed), status.String()
			restore = j.Policy.RestoreOnFailure
			j.RestorePending = restore // durable: a restarted daemon resumes it
		}
		if status.known && !status.signaled {
			code := status.code
			j.ExitCode = &code
		}
		return nil
	})
	if err != nil {
		return
	}
	m.unsupervise(id)
	m.cloneEnded(j)
	m.event(id, "died", "PID %d %s", pid, status)
	if restore {
		m.metrics.died()
		m.startAutoRestore(id)
	}
}

// startAutoRestore runs autoRestore in the background.
func (m *Manager) startAutoRestore(id string) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.autoRestore(id)
	}()
}

// autoRestore restores a failed job from its newest checkpoint after a
// backoff, while the job's RestorePending says one is due: a kill or a
// removal during the backoff cancels it (the restore's own transaction
// checks the flag), a daemon restart resumes it (Start). A failed attempt
// leaves it pending, with a longer backoff, until the policy's limit.
func (m *Manager) autoRestore(id string) {
	j, err := m.store.GetJob(m.ctx, id)
	if err != nil || State(j.State) != Failed || !j.RestorePending {
		return
	}
	if j.Restores >= j.Policy.MaxRestores {
		m.giveUp(id, fmt.Sprintf("not restoring again: %d automatic restores already (max_restores)", j.Restores))
		return
	}
	delay := m.cfg.RestoreBackoff << min(j.Restores, 5)
	if delay > 30*time.Second {
		delay = 30 * time.Second
	}
	m.crashpoint(fault.CrashAutoRestoreBackoff)
	select {
	case <-m.ctx.Done():
		return
	case <-time.After(delay):
	}
	// In cluster mode a restore here is a claim: never of a job another
	// node runs now, and not before that is known.
	for {
		err := m.allowed(m.ctx, j)
		if err == nil {
			break
		}
		if errors.Is(err, ErrOwnedElsewhere) {
			_ = m.Fence(m.ctx, id, err.Error())
			return
		}
		m.log.Warn("automatic restore waits for the cluster", "job", id, "err", err)
		select {
		case <-m.ctx.Done():
			return
		case <-time.After(delay):
		}
	}
	_, err = m.restore(m.ctx, id, "", true)
	switch {
	case err == nil, errors.Is(err, errAutoCancelled), errors.Is(err, store.ErrNotFound), m.ctx.Err() != nil:
		// restored, or no longer wanted (killed, removed, shutting down)
	case errors.Is(err, ErrNoCheckpoint), errors.Is(err, ErrIllegalTransition):
		m.giveUp(id, fmt.Sprintf("cannot restore automatically: %v", err))
	default:
		// restoreFailed left it pending and started the next attempt.
	}
}

// giveUp clears a job's pending automatic restore.
func (m *Manager) giveUp(id, why string) {
	_, err := m.store.Commit(context.Background(), id, store.Change{
		Job:    func(j *store.Job) error { j.RestorePending = false; return nil },
		Events: []store.Event{{Type: "gave-up", Message: why}},
	})
	if err != nil {
		m.log.Warn("record gave-up", "job", id, "err", err)
	}
	m.log.Info(why, "job", id, "event", "gave-up")
}

// tick takes periodic checkpoints of a running job.
func (m *Manager) tick(ctx context.Context, id string, every time.Duration) {
	// Spread the first tick over one period, so that jobs started together
	// are not all frozen at the same moment.
	select {
	case <-ctx.Done():
		return
	case <-time.After(rand.N(every)):
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		j, err := m.store.GetJob(ctx, id)
		if err != nil || State(j.State) != Running {
			continue
		}
		if m.unchanged(ctx, j) {
			continue // recorded as unchanged; the latest checkpoint stays the restore point
		}
		_, _ = m.dumpJob(ctx, j, true, "periodic") // failures are recorded as events
		// The next run comes a whole period after this checkpoint, not at
		// once for a tick that fell due while it ran (slow dumps on a busy
		// machine): the job gets the period to change.
		t.Reset(every)
	}
}
