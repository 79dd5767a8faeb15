package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/criu"
)

// Exit codes, documented in README.md. Scripts may branch on them.
const (
	ExitOK       = 0  // success
	ExitFailed   = 1  // the operation failed (CRIU refused, I/O error…)
	ExitUsage    = 2  // bad command line
	ExitInput    = 3  // bad input: no such process, missing file…
	ExitArchive  = 4  // the archive was refused: corrupt, unsafe, unsupported
	ExitNotReady = 5  // this machine cannot checkpoint: CRIU missing or too old, not root
	ExitPIDBusy  = 6  // restore: a PID the process needs is taken
	ExitDaemon   = 7  // the daemon is not running or refused the connection
	ExitInternal = 70 // a bug in cedana
)

// usageError marks errors in the command line itself.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// exitCode maps an error to the exit code that describes it.
func exitCode(err error) int {
	var ue usageError
	var ce *criu.Error
	switch {
	case errors.As(err, &ue), isCobraUsage(err):
		return ExitUsage
	case errors.Is(err, errDaemonDown):
		return ExitDaemon
	case errors.Is(err, errPIDBusyRPC), errors.Is(err, checkpoint.ErrPIDBusy), criu.IsCause(err, criu.CausePIDInUse):
		return ExitPIDBusy
	case errors.Is(err, archive.ErrNotArchive), errors.Is(err, archive.ErrCorrupt),
		errors.Is(err, archive.ErrUnsafeEntry), errors.Is(err, archive.ErrUnsupportedVersion),
		errors.Is(err, archive.ErrTooLarge), errors.Is(err, errArchiveRPC):
		return ExitArchive
	case errors.Is(err, checkpoint.ErrInvalidInput), errors.Is(err, os.ErrNotExist), errors.Is(err, errInputRPC):
		return ExitInput
	case errors.Is(err, criu.ErrNotFound), errors.Is(err, errNotReady),
		errors.As(err, &ce) && ce.Cause == criu.CauseCRIUTooOld:
		return ExitNotReady
	}
	return ExitFailed
}

var errNotReady = errors.New("this machine cannot checkpoint")

func isCobraUsage(err error) bool {
	s := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "invalid argument",
		"accepts ", "requires at least", "requires at most", "flag needs an argument", "required flag"} {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

// report prints err for a user and returns its exit code.
func report(cmd *cobra.Command, err error) int {
	code := exitCode(err)
	fmt.Fprintf(os.Stderr, "cedana: %v\n", err)
	if code == ExitUsage && cmd != nil {
		fmt.Fprintf(os.Stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}
