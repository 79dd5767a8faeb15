package checkpoint

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHookBackgroundChildDoesNotHang: a hook that leaves a child holding
// its stdout (`sleep 60 &`) returns within hookWaitDelay, successfully.
func TestHookBackgroundChildDoesNotHang(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	err := runHook(context.Background(), "pre-dump", "sleep 60 & echo $! > "+pidFile+"; echo started", 1, "x.zip", nil)
	took := time.Since(start)
	hookTestKill(t, pidFile)
	if err != nil {
		t.Fatalf("hook: %v", err)
	}
	if took > hookWaitDelay+3*time.Second {
		t.Errorf("the hook took %v: its background child held it up", took)
	}
}

// TestHookCancelKillsGroup: cancelling the operation kills the hook and
// everything it started, promptly.
func TestHookCancelKillsGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := runHook(ctx, "pre-dump", "sleep 60 & echo $! > "+pidFile+"; wait", 1, "x.zip", nil)
	took := time.Since(start)
	if err == nil {
		t.Error("a cancelled hook succeeded")
	}
	if took > hookWaitDelay+3*time.Second {
		t.Errorf("cancelling took %v", took)
	}
	b, rerr := os.ReadFile(pidFile)
	if rerr != nil {
		t.Fatalf("the hook did not start its child: %v", rerr)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	deadline := time.Now().Add(3 * time.Second)
	for hookTestAlive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if hookTestAlive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("the hook's child %d survived the cancellation", pid)
	}
}

// TestHookEnv: a hook gets its variables but not the caller's CEDANA_*
// (CEDANA_TOKEN is a secret); a failing hook's error shows its output.
func TestHookEnv(t *testing.T) {
	t.Setenv("CEDANA_TOKEN", "hook-must-not-see-this")
	err := runHook(context.Background(), "post-dump", `echo "[$CEDANA_HOOK $CEDANA_PID $CEDANA_ARCHIVE $X ${CEDANA_TOKEN:-none}]"; exit 3`, 42, "a.zip", []string{"X=y"})
	if err == nil {
		t.Fatal("a failing hook succeeded")
	}
	if !strings.Contains(err.Error(), "[post-dump 42 a.zip y none]") {
		t.Errorf("hook error: %v", err)
	}
}

func hookTestAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}

func hookTestKill(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}
