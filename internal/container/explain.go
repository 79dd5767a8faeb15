package container

import (
	"regexp"

	"github.com/cedana/cedana/internal/criu"
)

// Causes of container checkpoint failures that only containers have; the
// others are criu's (criu.CauseTCPEstablished, criu.CauseNetworkLock…).
const (
	CauseHostFile criu.Cause = "host-file" // a descriptor on a host file the container cannot see
	CauseMount    criu.Cause = "mount"     // a mount CRIU cannot see or recreate
)

// dockerCRIUConfig is the CRIU configuration file runc reads for every
// checkpoint and restore when the container names none: the only way to
// pass CRIU options through Docker's API.
const dockerCRIUConfig = "/etc/criu/runc.conf"

// containerHints are tried before criu's common hints: what CRIU's log
// means when the tree is a container.
var containerHints = []criu.Hint{
	{Pattern: regexp.MustCompile(`Can't lookup mount=\d+ for fd=\d+`), Cause: CauseHostFile,
		Fix: "a process of the container has a file of the host open (often its stdout or stderr redirected to a host file), which does not exist inside the container; start the container with its output on /dev/null, a pipe or a file inside its rootfs (`cedana run runc` connects it to pipes and logs them)"},
	{Pattern: regexp.MustCompile(`(?i)mnt: .*(unreachable|not reachable|doesn't have a proper root|unsupported|external)|Can't (bind-)?mount at|Unable to find .*mount|mount.*No such file`), Cause: CauseMount,
		Fix: "the container has a mount CRIU cannot see or recreate: a bind mount added after it started (e.g. with nsenter), or one whose source is missing on this machine; declare bind mounts in the container's configuration and make sure their sources exist where it is restored"},
}

// explain builds a *criu.Error from a runtime's error and CRIU's log,
// with the same explanations as process dumps plus containerHints. how
// says how to give CRIU an option with this runtime (for hints).
func explain(op, runtime string, err error, logPath string, how func(opt string) string) error {
	return criu.Explain(runtime, op, err, logPath, how, containerHints)
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
