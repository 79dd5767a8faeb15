package checkpoint

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Hooks are user scripts run around dumps and restores (the seed-era
// "action scripts"). Each is run as `sh -c SCRIPT` with CEDANA_HOOK (the
// hook's name), CEDANA_PID, CEDANA_ARCHIVE and the request's HookEnv in
// its environment. A failing pre-hook aborts the operation before CRIU
// runs; a failing post-hook is reported but does not undo anything.
type Hooks struct {
	PreDump     string `json:"pre_dump"`
	PostDump    string `json:"post_dump"`
	PreRestore  string `json:"pre_restore"`
	PostRestore string `json:"post_restore"`
}

// hookTimeout bounds how long a hook may run.
const hookTimeout = 60 * time.Second

// runHook runs one hook script; an empty script does nothing.
func runHook(ctx context.Context, name, script string, pid int, archive string, env []string) error {
	if strings.TrimSpace(script) == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, hookTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", script)
	cmd.Env = append(os.Environ(), "CEDANA_HOOK="+name, "CEDANA_PID="+strconv.Itoa(pid), "CEDANA_ARCHIVE="+archive)
	cmd.Env = append(cmd.Env, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		return fmt.Errorf("%s hook failed (%v): %s", name, err, msg)
	}
	return nil
}
