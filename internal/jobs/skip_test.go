package jobs

import (
	"math"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startProc starts argv in its own session with extra files, and kills it
// by PID at the end.
func startProc(t *testing.T, extra []*os.File, argv ...string) int {
	t.Helper()
	// What New does for the daemon: descriptors the test binary inherited
	// (go test's own pipes) must not reach the process.
	if err := unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.ExtraFiles = extra
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

// settled waits until pid's tree stops changing (a Python process takes a
// while to start on a busy machine) and returns its state.
func settled(t *testing.T, pid int) *treeState {
	t.Helper()
	var prev *treeState
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		// A short-lived child that ends while it is read is an error:
		// try again.
		cur, err := readTreeState(pid, "", "")
		if err == nil && prev != nil && prev.diff(cur) == "" {
			return cur
		}
		prev = cur
	}
	t.Fatalf("PID %d did not settle within 20 s", pid)
	return nil
}

func mustState(t *testing.T, pid int) *treeState {
	t.Helper()
	s, err := readTreeState(pid, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// An idle sleep stays unchanged and safe; a busy loop changes; a
// signal, even a blocked one, changes the state.
func TestTreeStateIdleBusySignal(t *testing.T) {
	idle := startProc(t, nil, "sleep", "3600")
	busy := startProc(t, nil, "sh", "-c", "while :; do :; done")
	blocked := startProc(t, nil, pythonBin, "-c",
		"import signal,os\nsignal.pthread_sigmask(signal.SIG_BLOCK,[signal.SIGUSR1])\nr,w=os.pipe()\nos.read(r,1)")
	a, c := settled(t, idle), settled(t, blocked)
	b := mustState(t, busy)
	time.Sleep(300 * time.Millisecond)
	if d := a.diff(mustState(t, idle)); d != "" {
		t.Errorf("idle sleep changed: %s", d)
	}
	if len(a.unsafe) > 0 {
		t.Errorf("idle sleep with /dev/null stdio is unsafe: %v", a.unsafe)
	}
	if d := b.diff(mustState(t, busy)); d != "it used CPU time" {
		t.Errorf("busy loop: diff %q, want CPU time", d)
	}
	if d := c.diff(mustState(t, blocked)); d != "" {
		t.Fatalf("blocked python changed before the signal: %s", d)
	}
	if err := syscall.Kill(blocked, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if d := c.diff(mustState(t, blocked)); d != "a signal is pending" {
		t.Errorf("blocked signal: diff %q, want a pending signal", d)
	}
}

// Sockets, pipes to outside and shared writable mappings make a job
// unsafe to skip; the job's own pipe is not.
func TestTreeStateUnsafe(t *testing.T) {
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sock, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, tc := range []struct {
		name  string
		extra []*os.File
		argv  []string
		want  string // "" = safe
	}{
		{"socket", []*os.File{sock}, []string{"sleep", "3600"}, "socket"},
		{"pipe to outside", []*os.File{r}, []string{"sleep", "3600"}, "pipe whose other end is outside"},
		{"own pipe", nil, []string{pythonBin, "-c", "import os\nr,w=os.pipe()\nos.read(r,1)"}, ""},
		{"shared memory", nil, []string{pythonBin, "-c", "import mmap,os\nm=mmap.mmap(-1,4096,flags=mmap.MAP_SHARED)\nr,w=os.pipe()\nos.read(r,1)"}, "shared and writable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pid := startProc(t, tc.extra, tc.argv...)
			s := settled(t, pid)
			got := strings.Join(s.unsafe, "; ")
			if tc.want == "" && got != "" {
				t.Errorf("unsafe: %s", got)
			}
			if tc.want != "" && !strings.Contains(got, tc.want) {
				t.Errorf("unsafe reasons %q lack %q", got, tc.want)
			}
		})
	}
}

// pythonBin is the system's Python when there is one: a version manager's
// shim on PATH (pyenv) runs helper processes before it execs Python.
var pythonBin = func() string {
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		return "/usr/bin/python3"
	}
	return "python3"
}()
