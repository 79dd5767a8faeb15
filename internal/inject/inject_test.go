package inject

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/proc"
	"golang.org/x/sys/unix"
)

// TestSetPOSIXLock: a stopped `sleep` that holds a file open on fd 3 is
// given a POSIX lock on it; the lock is the process's (another process
// sees it held), and the sleep, resumed, finishes its interrupted
// nanosleep and exits 0 — nothing of its state was disturbed.
func TestSetPOSIXLock(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace of another process)")
	}
	path := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("sleep", "1.5")
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL); _ = cmd.Wait() })
	time.Sleep(100 * time.Millisecond)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitState(t, pid, 'T')

	want := proc.POSIXLock{Write: true, Start: 120, End: 120}
	if err := SetPOSIXLock(pid, 3, want.Flock()); err != nil {
		t.Fatalf("SetPOSIXLock: %v", err)
	}
	if err := SetPOSIXLock(pid, 3, proc.POSIXLock{Start: 128, End: -1}.Flock()); err != nil {
		t.Fatalf("SetPOSIXLock to EOF: %v", err)
	}
	if !proc.HoldsPOSIXLock(pid, 3, want) {
		t.Errorf("PID %d does not hold %s after SetPOSIXLock", pid, want)
	}
	if !proc.HoldsPOSIXLock(pid, 3, proc.POSIXLock{Start: 128, End: -1}) {
		t.Errorf("PID %d does not hold the shared lock to EOF", pid)
	}
	// Another process (this one) cannot take the byte.
	lk := unix.Flock_t{Type: unix.F_WRLCK, Start: 120, Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &lk); err != nil {
		t.Fatal(err)
	}
	if lk.Type == unix.F_UNLCK || int(lk.Pid) != pid {
		t.Errorf("F_GETLK: the byte is not held by PID %d: %+v", pid, lk)
	}
	waitState(t, pid, 'T') // still stopped
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("sleep after the injection: %v (its interrupted nanosleep did not resume cleanly)", err)
	}
}

func waitState(t *testing.T, pid int, want byte) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if st, err := proc.ReadStat(pid); err == nil && st.State == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("PID %d never reached state %c", pid, want)
}
