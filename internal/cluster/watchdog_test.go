package cluster

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestWatchdogStopsAgain: a job past its deadline is stopped, and stopped
// again when something resumes it (a failed dump's resume, a SIGCONT),
// until an update gives it a new deadline; a PID of the update that a new
// process took meanwhile is never stopped.
func TestWatchdogStopsAgain(t *testing.T) {
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	pid := sleep.Process.Pid
	t.Cleanup(func() { _ = sleep.Process.Kill(); _ = sleep.Wait() })
	w := &watchdog{jobs: map[string]watched{}}
	now := time.Now()
	w.jobs["j"] = watched{WatchJob: WatchJob{Job: "j", PIDs: []int{pid}}, deadline: now.Add(-time.Millisecond)}
	w.fence(now)
	waitState(t, pid, 'T')

	_ = syscall.Kill(pid, syscall.SIGCONT)
	waitState(t, pid, 'S')
	w.fence(now.Add(restopEvery / 2)) // too soon
	if s := state(pid); s != 'S' {
		t.Fatalf("stopped again before restopEvery: state %c", s)
	}
	w.fence(now.Add(restopEvery))
	waitState(t, pid, 'T')

	// A new deadline (the daemon renewed): not stopped again.
	_ = syscall.Kill(pid, syscall.SIGCONT)
	waitState(t, pid, 'S')
	w.jobs["j"] = watched{WatchJob: WatchJob{Job: "j", PIDs: []int{pid}}, deadline: now.Add(time.Hour)}
	w.fence(now.Add(2 * restopEvery))
	if s := state(pid); s != 'S' {
		t.Fatalf("stopped although its deadline is ahead: state %c", s)
	}

	// A PID whose process changed since the first stop is left alone.
	w.jobs["j"] = watched{WatchJob: WatchJob{Job: "j", PIDs: []int{pid}}, stopped: true,
		starts: map[int]uint64{pid: 1}} // not its start time
	w.fence(now.Add(3 * restopEvery))
	time.Sleep(50 * time.Millisecond)
	if s := state(pid); s != 'S' {
		t.Fatalf("stopped a PID whose start time is not the one first stopped: state %c", s)
	}
}

// state reads the state letter of pid from its stat file (0 if gone).
func state(pid int) byte {
	b, err := readStat(pid)
	if err != nil {
		return 0
	}
	return b
}

func waitState(t *testing.T, pid int, want byte) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if state(pid) == want {
			return
		}
	}
	t.Fatalf("PID %d: state %c, want %c", pid, state(pid), want)
}

func readStat(pid int) (byte, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return 0, os.ErrInvalid
	}
	return b[i+2], nil
}
