// Package integration drives the real cedana binary against real processes
// with real CRIU. It needs root and CRIU ≥ 4.2 (`make setup`); without
// them the tests skip with the reason, except in CI (CI=true), where a
// missing prerequisite is a failure.
package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	procfs "github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/testenv"
)

// cedanaBin is the binary under test: $CEDANA_BIN, or one built for the run.
var cedanaBin string

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration setup:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	cedanaBin = os.Getenv("CEDANA_BIN")
	if cedanaBin == "" {
		dir, err := os.MkdirTemp("", "cedana-bin-")
		if err != nil {
			return 0, err
		}
		defer os.RemoveAll(dir)
		cedanaBin = filepath.Join(dir, "cedana")
		_, self, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(self), "..", "..")
		cmd := exec.Command("go", "build", "-o", cedanaBin, "./cmd/cedana")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("build cedana: %v\n%s", err, out)
		}
	}
	code := m.Run()
	if faultBinPath != "" {
		os.RemoveAll(filepath.Dir(faultBinPath)) // built by faultBinary
	}
	return code, nil
}

// inCI reports whether missing prerequisites must fail instead of skip
// (CI set, as .ci/run does; see testenv.InCI).
func inCI() bool { return testenv.InCI() }

// requireCRIU skips (or, in CI, fails) a test that needs root and CRIU.
// `make test` lists the skips and their reasons at its end.
func requireCRIU(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root")
	} else if _, err := exec.LookPath("criu"); err != nil {
		testenv.Missing(t, "needs criu on PATH (run `make setup`)")
	}
}

// requireBinary skips (or fails in CI) when a helper program is missing.
func requireBinary(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		testenv.Missing(t, name+" not installed (run `make setup`)")
	}
	return p
}

// env is an isolated cedana environment: its own HOME (config, logs,
// default dump dir) under the test's temp dir.
type env struct {
	t    *testing.T
	home string
	dir  string // dump directory
}

func newEnv(t *testing.T) *env {
	t.Helper()
	home := t.TempDir()
	return &env{t: t, home: home, dir: filepath.Join(home, "dumps")}
}

type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
}

// cedana runs the binary and returns what it printed and its exit code.
func (e *env) cedana(args ...string) result {
	e.t.Helper()
	return e.cedanaWith(nil, args...)
}

func (e *env) cedanaWith(extraEnv []string, args ...string) result {
	e.t.Helper()
	return e.runBinary(cedanaBin, extraEnv, args...)
}

// runBinary runs a cedana binary (cedanaBin, or one built for a test)
// in the environment.
func (e *env) runBinary(bin string, extraEnv []string, args ...string) result {
	e.t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "HOME="+e.home)
	cmd.Env = append(cmd.Env, extraEnv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("run cedana %v: %v", args, err)
	}
	return result{stdout: strings.TrimSpace(out.String()), stderr: errb.String(), code: code}
}

// dump checkpoints pid and returns the archive path.
func (e *env) dump(pid int, extra ...string) string {
	e.t.Helper()
	r := e.cedana(append([]string{"client", "dump", "-p", strconv.Itoa(pid), "-d", e.dir}, extra...)...)
	if r.code != 0 {
		e.t.Fatalf("dump failed: %s", r)
	}
	return r.stdout
}

// dumpJSON checkpoints pid with -o json and decodes what the dump prints
// into out.
func (e *env) dumpJSON(pid int, out any) {
	e.t.Helper()
	if err := json.Unmarshal([]byte(e.dump(pid, "-o", "json")), out); err != nil {
		e.t.Fatal(err)
	}
}

// restore restores an archive and returns the restored PID, registering
// its cleanup.
func (e *env) restore(path string, extra ...string) int {
	e.t.Helper()
	r := e.cedana(append([]string{"client", "restore", path}, extra...)...)
	if r.code != 0 {
		e.t.Fatalf("restore failed: %s", r)
	}
	pid, err := strconv.Atoi(r.stdout)
	if err != nil {
		e.t.Fatalf("restore printed %q, not a PID", r.stdout)
	}
	killTreeAtEnd(e.t, pid)
	return pid
}

// proc is a process started by a test.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// start runs argv in its own session with stdio on /dev/null, reaps it
// when it exits (so that its PID is freed at once), and kills it by PID
// at the end of the test.
func start(t *testing.T, argv ...string) *proc {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", argv, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	killTreeAtEnd(t, cmd.Process.Pid)
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// waitExit waits for the process to end (it is reaped by start's goroutine).
func (p *proc) waitExit(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("PID %d still running after %v", p.pid(), d)
	}
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return alive(p.pid())
	}
}

// killTreeAtEnd kills pid and its descendants, by PID, when the test ends.
func killTreeAtEnd(t *testing.T, pid int) {
	t.Cleanup(func() {
		for _, p := range descendants(pid) {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	})
}

func descendants(pid int) []int {
	tree, err := procfs.Tree(pid)
	if err != nil || len(tree) == 0 {
		return nil
	}
	return tree[1:]
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// eventually polls cond every 20 ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readCounter reads an integer a test process writes to a file; -1 if
// the file is missing or being rewritten.
func readCounter(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return -1
	}
	return n
}

// counterScript is a bash loop that writes an increasing counter to path
// atomically (write + rename), starting from 0.
func counterScript(path string) string {
	return fmt.Sprintf(`i=0; while :; do echo $i > %[1]s.tmp; mv -f %[1]s.tmp %[1]s; i=$((i+1)); sleep 0.05; done`, path)
}

// checkContinues asserts that the counter at path resumes from at least
// from (not from zero) and keeps increasing.
func checkContinues(t *testing.T, path string, from int) {
	t.Helper()
	var seen []int
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if v := readCounter(path); v >= 0 && (len(seen) == 0 || v != seen[len(seen)-1]) {
			seen = append(seen, v)
			if v < from {
				t.Fatalf("counter went back to %d after restore (was %d before): state was lost", v, from)
			}
			if v >= from+5 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("counter did not continue past %d after restore; saw %v", from, seen)
}
