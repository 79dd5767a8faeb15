package criu

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDiagnose(t *testing.T) {
	cases := []struct {
		log   string
		cause Cause
	}{
		{"(00.01) Error (criu/sk-inet.c:188): inet: Connected TCP socket, consider using --tcp-established option.", CauseTCPEstablished},
		{"(00.02) Error (criu/sk-unix.c:311): unix: External socket is used. Consider using --ext-unix-sk option.", CauseExtUnixSocket},
		{"(00.01) Error (criu/netfilter.c:88): iptables configuration failed", CauseNetworkLock},
		{"(00.00) Error (criu/cr-restore.c:1480): Can't fork for 4711: File exists", CausePIDInUse},
		{"(00.00) Error (criu/vdso.c:300): vdso: Unexpected rt vDSO area bounds", CauseCRIUTooOld},
		{"(00.00) Error (criu/proc_parse.c:100): Can't get rlimit 0: Operation not permitted", CauseNoCapResource},
		{"(00.00) Error (criu/files-reg.c:1000): Can't dump ghost file /tmp/x of 2097152 size, increase limit", CauseGhostLimit},
		{"(00.00) Error (criu/tty.c:100): tty: A session leader of 42(42) is outside of the tree", CauseShellJob},
		{"(00.00) Error (criu/files-reg.c:2000): File var/log/app.log has bad size 10 (expect 20)", CauseFileChanged},
		{"(00.00) Error (criu/seize.c:10): Unable to seize 42: Operation not permitted", CauseTraced},
		{"(00.95) Error (criu/file-lock.c:110): Some file locks are hold by dumping tasks! You can try --file-locks to dump them.", CauseFileLocks},
		{"(00.33) Error (criu/sk-inet.c:137): inet: Unsupported proto 262 for socket 76e3", CauseMPTCP},
		{`(00.33) Error (criu/sk-inet.c:139): inet: For Go programs, consider using "GODEBUG=multipathtcp=0" to disable MPTCP`, CauseMPTCP},
		{"(00.00) Error (criu/mystery.c:1): something nobody has seen", ""},
	}
	for _, c := range cases {
		cause, hint := diagnose([]string{c.log}, retryWith, nil)
		if cause != c.cause {
			t.Errorf("%q: cause %q, want %q", c.log, cause, c.cause)
		}
		if c.cause != "" && hint == "" {
			t.Errorf("%q: no hint", c.log)
		}
	}
}

func TestErrorLinesSkipsHarmlessAndBounds(t *testing.T) {
	var b strings.Builder
	b.WriteString("(00.000) Error (criu/util.c:1): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n")
	b.WriteString("(00.001) some info line\n")
	b.WriteString("(00.002) Error (criu/sk-inet.c:188): inet: Connected TCP socket, consider using --tcp-established option.\n")
	for i := 0; i < 20; i++ {
		b.WriteString("(00.003) Error (criu/cr-dump.c:1): Dumping FAILED.\n")
	}
	path := filepath.Join(t.TempDir(), "dump.log")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	lines, err := errorLines(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != maxLogLines {
		t.Errorf("%d lines, want %d", len(lines), maxLogLines)
	}
	if !strings.Contains(lines[0], "Connected TCP socket") {
		t.Errorf("first line %q should be the root cause", lines[0])
	}
	for _, l := range lines {
		if strings.Contains(l, "RLIMIT_NOFILE") {
			t.Errorf("harmless line kept: %q", l)
		}
	}
	e := newError("dump", os.ErrInvalid, path).(*Error)
	msg := e.Error()
	for _, want := range []string{"criu dump failed", path, "--tcp-established"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error message lacks %q:\n%s", want, msg)
		}
	}
	if !IsCause(e, CauseTCPEstablished) {
		t.Error("IsCause does not see the cause")
	}
}

func TestFormatVersion(t *testing.T) {
	if got := FormatVersion(40201); got != "4.2.1" {
		t.Errorf("FormatVersion(40201) = %q", got)
	}
}

// A daemon whose PATH lacks the sbin directories (an init system's, or
// sudo's secure_path) still finds CRIU where `make setup` installs it;
// a binary named explicitly is never replaced by one found elsewhere.
func TestPathFallsBackToSystemDirs(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "criu")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	old := systemDirs
	systemDirs = []string{filepath.Join(dir, "missing"), dir}
	defer func() { systemDirs = old }()
	t.Setenv("PATH", t.TempDir()) // no criu on PATH

	if p, err := New("").Path(); err != nil || p != bin {
		t.Fatalf(`New("").Path() = %q, %v; want %s from the system directories`, p, err, bin)
	}
	if p, err := New("/nonexistent/criu").Path(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an explicit missing binary resolved to %q, %v; want ErrNotFound", p, err)
	}
	systemDirs = []string{filepath.Join(dir, "missing")}
	if _, err := New("").Path(); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "make setup") {
		t.Fatalf("no CRIU anywhere: %v; want ErrNotFound saying to run make setup", err)
	}
}
