package checkpoint

import (
	"errors"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/proc"
)

// startSleep starts a sleep that the test kills and reaps at its end.
func startSleep(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skipf("skipping: cannot start sleep: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

func stateOf(t *testing.T, pid int) byte {
	t.Helper()
	st, err := proc.ReadStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	return st.State
}

func waitState(t *testing.T, pid int, want func(byte) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !want(stateOf(t, pid)) {
		if time.Now().After(deadline) {
			t.Fatalf("PID %d is %c, not %s", pid, stateOf(t, pid), what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestResumeTreeResumesWhatTheDumpStopped: a process stopped by the dump
// (as CRIU's --leave-stopped leaves it) runs again; one that was stopped
// before the dump stays stopped.
func TestResumeTreeResumesWhatTheDumpStopped(t *testing.T) {
	frozen, userStopped := startSleep(t), startSleep(t)
	_ = syscall.Kill(userStopped, syscall.SIGSTOP)
	waitState(t, userStopped, isStopped, "stopped")
	snap := &snapshot{startTimes: map[int]uint64{}}
	for _, pid := range []int{frozen, userStopped} {
		st, err := proc.ReadStat(pid)
		if err != nil {
			t.Fatal(err)
		}
		snap.processes = append(snap.processes, archive.Process{PID: pid})
		snap.startTimes[pid] = st.StartTime
	}
	before := stoppedBefore(snap)
	if !before[userStopped] || before[frozen] {
		t.Fatalf("stoppedBefore = %v, want only %d", before, userStopped)
	}
	// The dump freezes the tree and fails after CRIU finished.
	_ = syscall.Kill(frozen, syscall.SIGSTOP)
	waitState(t, frozen, isStopped, "stopped")

	if err := resumeTree(frozen, snap, before); err != nil {
		t.Fatalf("resumeTree: %v", err)
	}
	if s := stateOf(t, frozen); isStopped(s) {
		t.Errorf("the process the dump stopped is still %c", s)
	}
	if s := stateOf(t, userStopped); !isStopped(s) {
		t.Errorf("the process stopped before the dump was resumed (%c)", s)
	}
}

// TestResumeTreeReportsWhatStaysStopped: a process SIGCONT cannot resume
// (held in a tracing stop) is reported loudly, by PID.
func TestResumeTreeReportsWhatStaysStopped(t *testing.T) {
	pid := startSleep(t)
	runtime.LockOSThread() // ptrace requests must come from the tracer thread
	defer runtime.UnlockOSThread()
	if _, _, e := syscall.Syscall6(syscall.SYS_PTRACE, 0x4206 /* PTRACE_SEIZE */, uintptr(pid), 0, 0, 0, 0); e != 0 {
		t.Skipf("skipping: cannot ptrace a child here: %v", e)
	}
	defer syscall.PtraceDetach(pid)
	if _, _, e := syscall.Syscall6(syscall.SYS_PTRACE, 0x4207 /* PTRACE_INTERRUPT */, uintptr(pid), 0, 0, 0, 0); e != 0 {
		t.Fatalf("PTRACE_INTERRUPT: %v", e)
	}
	waitState(t, pid, func(s byte) bool { return s == 't' }, "in a tracing stop")
	st, _ := proc.ReadStat(pid)
	snap := &snapshot{processes: []archive.Process{{PID: pid}}, startTimes: map[int]uint64{pid: st.StartTime}}

	err := resumeTree(pid, snap, map[int]bool{})
	if !errors.Is(err, ErrLeftStopped) {
		t.Fatalf("resumeTree = %v, want ErrLeftStopped", err)
	}
	if !strings.Contains(err.Error(), "kill -CONT "+strconv.Itoa(pid)) {
		t.Errorf("the error does not say how to resume PID %d: %v", pid, err)
	}
}
