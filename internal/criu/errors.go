package criu

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// Error is a failed CRIU operation, explained.
type Error struct {
	// Runtime is the program that ran CRIU for Cedana ("runc", "docker"),
	// or "" when Cedana ran CRIU itself.
	Runtime string
	// Op is "dump" or "restore" ("checkpoint" or "restore" for a runtime).
	Op string
	// Err is what go-criu reported (usually only "operation failed").
	Err error
	// LogPath is CRIU's log for the operation.
	LogPath string
	// Lines are the lines of the log that say why, oldest first.
	Lines []string
	// Cause names a known cause (see the Cause constants), or "".
	Cause Cause
	// Hint tells the user how to fix a known cause, or is "".
	Hint string
}

// Cause is a known reason for CRIU to fail, which callers may branch on.
type Cause string

// Known causes.
const (
	CauseTCPEstablished Cause = "tcp-established"  // a TCP connection and no --tcp-established
	CauseNetworkLock    Cause = "network-lock"     // locking the network failed
	CauseExtUnixSocket  Cause = "ext-unix-socket"  // unix socket connected outside the tree
	CauseShellJob       Cause = "shell-job"        // terminal or session outside the tree
	CauseGhostLimit     Cause = "ghost-limit"      // a deleted open file over the ghost limit
	CausePIDInUse       Cause = "pid-in-use"       // restore: a PID of the tree is taken
	CauseNoCapResource  Cause = "cap-sys-resource" // another user's process, no CAP_SYS_RESOURCE
	CauseCRIUTooOld     Cause = "criu-too-old"     // kernel newer than CRIU understands
	CauseFileChanged    Cause = "file-changed"     // restore: a file differs from the dump
	CauseFileMissing    Cause = "file-missing"     // restore: a file the process had open is gone
	CauseTraced         Cause = "traced"           // the process is traced (gdb, strace)
	CauseExtMount       Cause = "external-mount"   // a file on a mount CRIU cannot see
	CauseMPTCP          Cause = "mptcp"            // a Multipath TCP socket (Go ≥ 1.24 servers)
	CauseFileLocks      Cause = "file-locks"       // a file lock and no --file-locks
)

func (e *Error) Error() string {
	var b strings.Builder
	if e.Runtime != "" {
		// A runtime's own message says more than "operation failed".
		fmt.Fprintf(&b, "%s %s failed", e.Runtime, e.Op)
		if e.Err != nil {
			fmt.Fprintf(&b, ": %v", e.Err)
		}
		for _, l := range e.Lines {
			b.WriteString("\n    ")
			b.WriteString(l)
		}
	} else {
		e.writeCRIU(&b)
	}
	if e.LogPath != "" {
		fmt.Fprintf(&b, "\n  full log: %s", e.LogPath)
	}
	if e.Hint != "" {
		fmt.Fprintf(&b, "\n  fix: %s", e.Hint)
	}
	return b.String()
}

func (e *Error) writeCRIU(b *strings.Builder) {
	fmt.Fprintf(b, "criu %s failed", e.Op)
	if len(e.Lines) > 0 {
		b.WriteString(":")
		for _, l := range e.Lines {
			b.WriteString("\n    ")
			b.WriteString(l)
		}
	} else if e.Err != nil {
		fmt.Fprintf(b, ": %v", e.Err)
	}
}

func (e *Error) Unwrap() error { return e.Err }

// IsCause reports whether err is a CRIU error with the given cause.
func IsCause(err error, c Cause) bool {
	var e *Error
	return errors.As(err, &e) && e.Cause == c
}

// maxLogLines bounds how much of CRIU's log an error repeats.
const maxLogLines = 8

// harmless matches log lines that look like errors but are not the reason
// for any failure (seen on every run in sandboxes without CAP_SYS_RESOURCE).
var harmless = []*regexp.Regexp{
	regexp.MustCompile(`Can't setup RLIMIT_NOFILE for self`),
}

// Hint maps a pattern of CRIU's log to a cause and its fix. In Fix, %s
// stands for how the user gives CRIU the option Option (see Explain);
// Option is "" when the fix needs no CRIU option.
type Hint struct {
	Pattern *regexp.Regexp
	Cause   Cause
	Option  string
	Fix     string
}

// hints are the known causes, for processes and containers alike. The
// first match, in this order, wins.
var hints = []Hint{
	{regexp.MustCompile(`vdso: Unexpected rt vDSO area bounds|Unexpected vDSO`), CauseCRIUTooOld, "",
		"this kernel needs a newer CRIU (≥ 4.2): run `make setup`"},
	{regexp.MustCompile(`Can't get rlimit|rlimit.*Operation not permitted`), CauseNoCapResource, "",
		"the process belongs to another user and this root lacks CAP_SYS_RESOURCE, so CRIU cannot read its limits; run the process as root, or checkpoint on a host where root has CAP_SYS_RESOURCE"},
	{regexp.MustCompile(`(?i)connected tcp socket|consider using --tcp-established`), CauseTCPEstablished, "tcp-established",
		"a process has an established TCP connection: %s"},
	{regexp.MustCompile(`(?i)iptables|nftables|Failed to lock TCP connection|network.?lock`), CauseNetworkLock, "network-lock nftables",
		"locking the network failed: %s (built into CRIU ≥ 4; `make setup` installs it), or install iptables"},
	{regexp.MustCompile(`(?i)external socket is used|ext-unix-sk|Unix socket.*(peer|external)`), CauseExtUnixSocket, "ext-unix-sk",
		"a process has a unix socket connected to a process outside the checkpointed tree: %s (the peer must exist again at restore), or checkpoint the peer too"},
	{regexp.MustCompile(`(?i)session leader|shell.?job|tty.*(not|outside)|Can't dump tty`), CauseShellJob, "shell-job",
		"the process is attached to a terminal or a session outside the dumped tree: %s (and restore from a terminal)"},
	{regexp.MustCompile(`(?i)ghost.*(limit|too big|size)|Can't dump ghost file`), CauseGhostLimit, "ghost-limit 64MiB",
		"the process holds a deleted file larger than the ghost limit: %s, or larger"},
	{regexp.MustCompile(`(?i)can't fork for \d+|File exists.*clone|clone.*File exists`), CausePIDInUse, "",
		"a PID of the checkpointed tree is in use: stop that process (or wait until its parent reaps it) and retry"},
	{regexp.MustCompile(`(?i)file locks are hold|--file-locks`), CauseFileLocks, "file-locks",
		"a process of the tree held a file lock (a database, a lock file) when it was frozen: %s"},
	{regexp.MustCompile(`Unsupported proto 262|multipathtcp`), CauseMPTCP, "",
		"the process has a Multipath TCP socket, which CRIU cannot dump: restart it with GODEBUG=multipathtcp=0 in its environment (Go ≥ 1.24 listens with MPTCP by default), or start it while MPTCP is off (sysctl -w net.mptcp.enabled=0)"},
	{regexp.MustCompile(`(?i)(bad size|size mismatch|has changed)`), CauseFileChanged, "",
		"a file the process had open changed since the checkpoint; put back the file as it was (or restore with --replace-files to write the archived copy)"},
	{regexp.MustCompile(`(?i)(Can't open|Unable to open|Can't lookup).*(No such file|ENOENT)`), CauseFileMissing, "",
		"a file the process had open is missing on this machine; recreate it (same path) and retry"},
	{regexp.MustCompile(`(?i)seize.*(Operation not permitted|busy)|is traced|ptrace.*EPERM`), CauseTraced, "",
		"CRIU cannot attach to the process: detach any debugger or tracer (gdb, strace) and retry"},
	{regexp.MustCompile(`(?i)Can't lookup mount=|mount.*(not found|external)|Unreachable mount`), CauseExtMount, "",
		"the process uses a file on a mount CRIU cannot see (for example a bind mount from outside its namespace); close it or run the process inside a namespace that contains the mount"},
}

// retryWith says how to give CRIU an option on cedana's own command line.
func retryWith(opt string) string { return "retry with --" + opt }

// newError builds an *Error from go-criu's error and CRIU's log.
func newError(op string, err error, logPath string) error {
	if isExecMissing(err) {
		return fmt.Errorf("%w: run `make setup`", ErrNotFound)
	}
	e := &Error{Op: op, Err: err, LogPath: logPath}
	lines, _ := errorLines(logPath)
	e.Lines = lines
	e.Cause, e.Hint = diagnose(lines, retryWith, nil)
	return e
}

// Explain builds an *Error for a CRIU operation that a runtime (runc,
// Docker) ran for Cedana: the runtime's error, the lines of CRIU's log
// at logPath that say why (logPath may be "" or missing), and the fix of
// a known cause. option says how a user gives CRIU an option through
// that runtime; extra hints, tried before the common ones, cover causes
// only that caller knows. The runtime's own message counts as a log
// line for the hints.
func Explain(runtime, op string, err error, logPath string, option func(opt string) string, extra []Hint) *Error {
	e := &Error{Runtime: runtime, Op: op, Err: err, LogPath: logPath}
	if logPath != "" {
		e.Lines, _ = errorLines(logPath)
		if _, serr := os.Stat(logPath); serr != nil {
			e.LogPath = ""
		}
	}
	lines := e.Lines
	if err != nil {
		lines = append([]string{err.Error()}, lines...)
	}
	e.Cause, e.Hint = diagnose(lines, option, extra)
	return e
}

// LogErrors returns the lines of a CRIU log that say why an operation
// failed (the harmless ones left out, at most a handful), for callers that
// run CRIU through another program (runc, Docker) and explain its
// failures themselves. It returns nil if the log cannot be read.
func LogErrors(logPath string) []string {
	lines, _ := errorLines(logPath)
	return lines
}

// errorLines returns the error lines of a CRIU log, the harmless ones
// left out, at most maxLogLines of them (the last ones: CRIU logs the
// root cause first, but the first line after a cascade is kept too).
func errorLines(logPath string) ([]string, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if !isErrorLine(line) || isHarmless(line) {
			continue
		}
		out = append(out, strings.TrimSpace(line))
	}
	if len(out) > maxLogLines {
		out = append(out[:1], out[len(out)-maxLogLines+1:]...)
	}
	return out, sc.Err()
}

func isErrorLine(l string) bool {
	return strings.Contains(l, "Error (") || strings.Contains(l, "Error:") ||
		strings.Contains(l, "Warn  (") && strings.Contains(l, "consider")
}

func isHarmless(l string) bool {
	for _, re := range harmless {
		if re.MatchString(l) {
			return true
		}
	}
	return false
}

// diagnose finds the first known cause in the log lines, trying extra
// before the common hints, and returns it with its fix.
func diagnose(lines []string, option func(opt string) string, extra []Hint) (Cause, string) {
	for _, table := range [][]Hint{extra, hints} {
		for _, h := range table {
			for _, l := range lines {
				if h.Pattern.MatchString(l) {
					if h.Option == "" {
						return h.Cause, h.Fix
					}
					return h.Cause, fmt.Sprintf(h.Fix, option(h.Option))
				}
			}
		}
	}
	return "", ""
}
