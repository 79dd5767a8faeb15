package integration

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestOtherUsersProcess: a process owned by another user. Where root has
// CAP_SYS_RESOURCE the dump works and the restore brings it back; where it
// lacks it (these sandboxes), the dump fails with an explanation naming
// the missing capability, and the process keeps running.
func TestOtherUsersProcess(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	cmd := exec.Command("sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sleep as nobody: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	killTreeAtEnd(t, cmd.Process.Pid)

	r := e.cedana("client", "dump", "-p", itoa(cmd.Process.Pid), "-d", e.dir)
	if r.code == 0 {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("dumped process still running")
		}
		e.restore(r.stdout)
		return
	}
	if !strings.Contains(r.stderr, "CAP_SYS_RESOURCE") {
		t.Errorf("the failure does not name the missing capability:\n%s", r)
	}
	if strings.Contains(r.stderr, "RLIMIT_NOFILE") {
		t.Errorf("the harmless RLIMIT_NOFILE line is shown as a reason:\n%s", r.stderr)
	}
	if !alive(cmd.Process.Pid) {
		t.Error("the process died after a failed dump")
	}
	if files, _ := os.ReadDir(e.dir); len(files) > 0 {
		t.Errorf("a failed dump left files: %v", files)
	}
}
