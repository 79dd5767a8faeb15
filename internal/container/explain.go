package container

import (
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/cedana/cedana/internal/criu"
)

// CRIUError is a container checkpoint or restore that CRIU refused,
// explained: the lines of CRIU's log that say why, where the log is, and
// the fix when the cause is known.
type CRIUError struct {
	// Op is "checkpoint" or "restore".
	Op string
	// Runtime is "docker" or "runc".
	Runtime string
	// Err is what the runtime reported.
	Err error
	// LogPath is CRIU's log, when known.
	LogPath string
	// Lines are the log's error lines, oldest first.
	Lines []string
	// Cause names a known cause ("" if none matched).
	Cause string
	// Hint is the fix for a known cause.
	Hint string
}

func (e *CRIUError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s failed", e.Runtime, e.Op)
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	for _, l := range e.Lines {
		b.WriteString("\n    ")
		b.WriteString(l)
	}
	if e.LogPath != "" {
		fmt.Fprintf(&b, "\n  full log: %s", e.LogPath)
	}
	if e.Hint != "" {
		fmt.Fprintf(&b, "\n  fix: %s", e.Hint)
	}
	return b.String()
}

func (e *CRIUError) Unwrap() error { return e.Err }

// Known causes of container checkpoint failures.
const (
	CauseHostFile    = "host-file"    // a descriptor on a host file the container cannot see
	CauseMount       = "mount"        // a mount CRIU cannot see or recreate
	CauseNetworkLock = "network-lock" // locking the network failed
	CauseTCP         = "tcp"          // an established TCP connection without tcp-established
	CauseUnixSocket  = "unix-socket"  // a unix socket connected outside the container
	CauseCRIUTooOld  = "criu-too-old" // the kernel needs a newer CRIU
)

// dockerCRIUConfig is the CRIU configuration file runc reads for every
// checkpoint and restore when the container names none: the only way to
// pass CRIU options through Docker's API.
const dockerCRIUConfig = "/etc/criu/runc.conf"

// containerHints map CRIU log lines to a cause and its fix. The first
// match, in this order, wins. A hint's %s is replaced by how to give CRIU
// the option opt with this runtime.
var containerHints = []struct {
	re    *regexp.Regexp
	cause string
	opt   string
	hint  string
}{
	{regexp.MustCompile(`vdso: Unexpected rt vDSO area bounds|Unexpected vDSO`), CauseCRIUTooOld, "",
		"this kernel needs a newer CRIU (≥ 4.2): run `make setup`"},
	{regexp.MustCompile(`Can't lookup mount=\d+ for fd=\d+`), CauseHostFile, "",
		"a process of the container has a file of the host open (often its stdout or stderr redirected to a host file), which does not exist inside the container; start the container with its output on /dev/null, a pipe or a file inside its rootfs (`cedana run runc` connects it to pipes and logs them)"},
	{regexp.MustCompile(`(?i)connected tcp socket|consider using --tcp-established`), CauseTCP, "tcp-established",
		"the container has an established TCP connection: %s"},
	{regexp.MustCompile(`(?i)iptables|nftables|Failed to lock TCP connection|network.?lock`), CauseNetworkLock, "network-lock nftables",
		"locking the container's network failed: %s (CRIU ≥ 4 has nftables built in; `make setup` installs it), or install iptables"},
	{regexp.MustCompile(`(?i)external socket is used|ext-unix-sk|Unix socket.*(peer|external)`), CauseUnixSocket, "ext-unix-sk",
		"a process of the container has a unix socket connected to a process outside it: %s (the peer must exist again at restore), or close the connection"},
	{regexp.MustCompile(`(?i)mnt: .*(unreachable|not reachable|doesn't have a proper root|unsupported|external)|Can't (bind-)?mount at|Unable to find .*mount|mount.*No such file`), CauseMount, "",
		"the container has a mount CRIU cannot see or recreate: a bind mount added after it started (e.g. with nsenter), or one whose source is missing on this machine; declare bind mounts in the container's configuration and make sure their sources exist where it is restored"},
}

// explain builds a *CRIUError from a runtime's error and CRIU's log.
// how says how to give CRIU an option with this runtime (for hints).
func explain(op, runtime string, err error, logPath string, how func(opt string) string) error {
	e := &CRIUError{Op: op, Runtime: runtime, Err: err, LogPath: logPath}
	if logPath != "" {
		e.Lines = criu.LogErrors(logPath)
		if _, serr := os.Stat(logPath); serr != nil {
			e.LogPath = ""
		}
	}
	lines := e.Lines
	if err != nil {
		lines = append([]string{err.Error()}, lines...)
	}
	for _, h := range containerHints {
		if matchAny(h.re, lines) {
			e.Cause, e.Hint = h.cause, h.hint
			if h.opt != "" {
				e.Hint = fmt.Sprintf(h.hint, how(h.opt))
			}
			break
		}
	}
	return e
}

func matchAny(re *regexp.Regexp, lines []string) bool {
	for _, l := range lines {
		if re.MatchString(l) {
			return true
		}
	}
	return false
}

// criuLogPath finds the path of CRIU's log in a runtime's error message
// ("... log file: /x/dump.log" from runc, "path= /x/criu-dump.log" through
// containerd).
var criuLogPath = regexp.MustCompile(`(?:log file:|path=)\s*(/[^\s:"]+\.log)`)

func logPathIn(msg string) string {
	if m := criuLogPath.FindStringSubmatch(msg); m != nil {
		return m[1]
	}
	return ""
}
