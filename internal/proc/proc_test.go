package proc

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	line := "4242 (my (weird) name) S 1 4242 4242 34816 4242 4194560 1 0 0 0 5 6 0 0 20 0 1 0 123456 1000000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
	st, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != 4242 || st.Comm != "my (weird) name" || st.State != 'S' || st.PPID != 1 ||
		st.PGID != 4242 || st.SID != 4242 || st.TTYNr != 34816 || st.StartTime != 123456 || st.RSSPages != 250 {
		t.Errorf("parsed %+v", st)
	}
	for _, bad := range []string{"", "x", "1 (a", "1 (a) S 1 2"} {
		if _, err := parseStat(bad); err == nil {
			t.Errorf("parseStat(%q) succeeded", bad)
		}
	}
}

func TestTTYName(t *testing.T) {
	if got := TTYName(34816); got != "/dev/pts/0" {
		t.Errorf("TTYName(34816) = %q", got)
	}
	if got := TTYName(0); got != "" {
		t.Errorf("TTYName(0) = %q", got)
	}
}

func TestTreeAndFDs(t *testing.T) {
	cmd := exec.Command("bash", "-c", "sleep 30 & sleep 30 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	defer func() {
		for _, p := range mustTree(t, pid) {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		_ = cmd.Wait()
	}()
	deadline := time.Now().Add(5 * time.Second)
	for len(mustTree(t, pid)) < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(mustTree(t, pid)); n != 3 {
		t.Fatalf("tree of bash with 2 children has %d processes", n)
	}
	fds, err := FDs(os.Getpid())
	if err != nil || len(fds) == 0 {
		t.Fatalf("FDs(self) = %v, %v", fds, err)
	}
	if _, err := ReadStat(1 << 30); err == nil {
		t.Error("ReadStat of an impossible PID succeeded")
	}
}

func mustTree(t *testing.T, pid int) []int {
	t.Helper()
	tree, err := Tree(pid)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func TestInetAddr(t *testing.T) {
	if got := inetAddr("0100007F:1F90"); got != "127.0.0.1:8080" {
		t.Errorf("inetAddr = %q", got)
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add("4242 (my (weird) name) S 1 4242 4242 34816 4242 4194560 1 0 0 0 5 6 0 0 20 0 1 0 123456 1000000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0")
	f.Add("1 () R")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = parseStat(s) // must not panic
	})
}

// TestReadStatus: this process's real IDs, and its PID as its own PID
// namespace sees it (the tests run in the host's).
func TestReadStatus(t *testing.T) {
	st, err := ReadStatus(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.UID != os.Getuid() || st.GID != os.Getgid() || st.InnerPID != os.Getpid() {
		t.Errorf("ReadStatus(self) = %+v; want UID %d, GID %d, InnerPID %d", st, os.Getuid(), os.Getgid(), os.Getpid())
	}
}
