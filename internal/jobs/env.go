package jobs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/cedana/cedana/internal/store"
)

// JobEnv returns the environment a job cedana starts gets from env:
//
//   - without any CEDANA_* variable: the client's token and other secrets
//     must not end up in the job's memory, hence in every checkpoint;
//   - with multipathtcp=0 added to GODEBUG (unless it sets multipathtcp
//     already): Go ≥ 1.24 servers listen with MPTCP by default, and CRIU
//     cannot dump MPTCP sockets ("Unsupported proto 262").
func JobEnv(env []string) []string {
	out := make([]string, 0, len(env)+1)
	godebug := -1
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "CEDANA_") {
			continue
		}
		if k == "GODEBUG" {
			godebug = len(out)
		}
		out = append(out, kv)
	}
	if godebug < 0 {
		return append(out, "GODEBUG=multipathtcp=0")
	}
	v := strings.TrimPrefix(out[godebug], "GODEBUG=")
	for _, s := range strings.Split(v, ",") {
		if strings.HasPrefix(strings.TrimSpace(s), "multipathtcp=") {
			return out // the user chose
		}
	}
	if v == "" {
		out[godebug] = "GODEBUG=multipathtcp=0"
	} else {
		out[godebug] = "GODEBUG=" + v + ",multipathtcp=0"
	}
	return out
}

// resolveCommand finds the program to run. Clients send an absolute path
// (resolved with their own PATH and working directory); a relative path
// with a slash is taken relative to the job's directory, a bare name is
// looked up in the job's PATH (from env), else the daemon's.
func resolveCommand(name, dir string, env []string) (string, error) {
	if !strings.Contains(name, "/") {
		pathVar := os.Getenv("PATH")
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, "PATH="); ok {
				pathVar = v
			}
		}
		for _, d := range filepath.SplitList(pathVar) {
			if d == "" || !filepath.IsAbs(d) {
				continue
			}
			if p, err := exec.LookPath(filepath.Join(d, name)); err == nil {
				return p, nil
			}
		}
		return "", fmt.Errorf("%w: %q not found in PATH", store.ErrInvalid, name)
	}
	if !filepath.IsAbs(name) {
		if dir == "" {
			dir = "/"
		}
		name = filepath.Join(dir, name)
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%w: %v", store.ErrInvalid, err)
	}
	return p, nil
}
