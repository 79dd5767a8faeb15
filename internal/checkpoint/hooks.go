package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Hooks are user scripts run around dumps and restores (the seed-era
// "action scripts"). Each is run as `sh -c SCRIPT` with CEDANA_HOOK (the
// hook's name), CEDANA_PID, CEDANA_ARCHIVE and the request's HookEnv in
// its environment. A failing pre-hook aborts the operation before CRIU
// runs; a failing post-hook is reported but does not undo anything.
//
// A hook runs in its own process group. When it times out (hookTimeout)
// or the operation is cancelled, the whole group is killed. A hook that
// exits but leaves a background child holding its output (`sleep 60 &`)
// does not hold the operation up: its output is collected for at most
// hookWaitDelay after it exits.
type Hooks struct {
	PreDump     string `json:"pre_dump"`
	PostDump    string `json:"post_dump"`
	PreRestore  string `json:"pre_restore"`
	PostRestore string `json:"post_restore"`
}

const (
	// hookTimeout bounds how long a hook may run.
	hookTimeout = 60 * time.Second
	// hookWaitDelay bounds how long a hook's output is read after it
	// exited (or was killed), when a child of it still holds the pipe.
	hookWaitDelay = 2 * time.Second
	// hookOutputMax is how much of a hook's output is kept (the end).
	hookOutputMax = 2000
)

// runHook runs one hook script; an empty script does nothing.
func runHook(ctx context.Context, name, script string, pid int, archive string, env []string) error {
	if strings.TrimSpace(script) == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, hookTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", script)
	cmd.Env = append(hookBaseEnv(os.Environ()), "CEDANA_HOOK="+name, "CEDANA_PID="+strconv.Itoa(pid), "CEDANA_ARCHIVE="+archive)
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The group's ID is the shell's PID (Setpgid): kill it all.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = hookWaitDelay
	out := &tailBuffer{max: hookOutputMax}
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	if errors.Is(err, exec.ErrWaitDelay) {
		// The hook itself succeeded; a child it left running still held
		// its output, which we stopped reading.
		err = nil
	}
	if err != nil {
		msg := strings.TrimSpace(out.String())
		if ctx.Err() == context.DeadlineExceeded {
			return fmt.Errorf("%s hook did not finish within %v and was killed (with its process group): %s", name, hookTimeout, msg)
		}
		return fmt.Errorf("%s hook failed (%v): %s", name, err, msg)
	}
	return nil
}

// hookBaseEnv is the environment a hook inherits: ours without CEDANA_*
// variables (such as CEDANA_TOKEN, a secret), which the hook gets only as
// set above.
func hookBaseEnv(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		if !strings.HasPrefix(kv, "CEDANA_") {
			out = append(out, kv)
		}
	}
	return out
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
