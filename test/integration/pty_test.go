package integration

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
)

// TestShellJobOnPTY: a process whose controlling terminal is a
// pseudo-terminal is detected as a shell job, dumped, and restored onto
// the terminal of the restoring cedana.
func TestShellJobOnPTY(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	ctr := filepath.Join(t.TempDir(), "counter")
	cmd := exec.Command("bash", "-c", counterScript(ctr))
	ptmx, err := pty.Start(cmd)
	if err != nil {
		t.Fatalf("start on a pty: %v", err)
	}
	defer ptmx.Close()
	go func() { _, _ = io.Copy(io.Discard, ptmx) }()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	killTreeAtEnd(t, cmd.Process.Pid)
	eventually(t, 5*time.Second, "counter to start", func() bool { return readCounter(ctr) >= 3 })

	r := e.cedana("client", "dump", "-p", itoa(cmd.Process.Pid), "-d", e.dir)
	if r.code != 0 {
		t.Fatalf("dump: %s", r)
	}
	if !strings.Contains(r.stderr, "shell-job") {
		t.Errorf("dump did not explain choosing shell-job:\n%s", r.stderr)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("process not stopped after dump")
	}
	before := readCounter(ctr)

	// Restore from a terminal: run cedana with a new pty as its terminal
	// (stdout stays a pipe, so the PID can be read).
	rc := exec.Command(cedanaBin, "client", "restore", r.stdout)
	rc.Env = append(os.Environ(), "HOME="+e.home)
	var stdout, stderr strings.Builder
	rc.Stdout, rc.Stderr = &stdout, &stderr
	rptmx, err := pty.Start(rc)
	if err != nil {
		t.Fatal(err)
	}
	defer rptmx.Close()
	go func() { _, _ = io.Copy(io.Discard, rptmx) }()
	if err := rc.Wait(); err != nil {
		t.Fatalf("restore on a pty: %v\n%s", err, stderr.String())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(stdout.String()))
	if err != nil {
		t.Fatalf("restore printed %q, not a PID", stdout.String())
	}
	killTreeAtEnd(t, pid)
	checkContinues(t, ctr, before)
}
