package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/storage"
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
	ExitStorage  = 8  // the checkpoint store refused or failed: credentials, bucket, unreachable, full, key
	ExitInternal = 70 // a bug in cedana
)

// usageError marks errors in the command line itself. Every one is typed
// where it arises (flag parsing through cobra's flag-error hook, argument
// counts and required flags through typeUsageErrors, our own checks
// through usagef); nothing is recognised by its wording, so an EINVAL
// ("invalid argument") from the system stays an operation failure.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// exitCode maps an error to the exit code that describes it.
func exitCode(err error) int {
	var ue usageError
	var ce *criu.Error
	switch {
	case errors.As(err, &ue):
		return ExitUsage
	case errors.Is(err, errDaemonDown):
		return ExitDaemon
	case errors.Is(err, errPIDBusyRPC), errors.Is(err, checkpoint.ErrPIDBusy), criu.IsCause(err, criu.CausePIDInUse):
		return ExitPIDBusy
	case errors.Is(err, storage.ErrCorrupt):
		return ExitArchive // tampered with or truncated in the store
	case errors.Is(err, storage.ErrAccess), errors.Is(err, storage.ErrNoBucket), errors.Is(err, storage.ErrUnreachable),
		errors.Is(err, storage.ErrNoSpace), errors.Is(err, storage.ErrWrongKey), errors.Is(err, storage.ErrNoKey),
		errors.Is(err, storage.ErrEncrypted):
		return ExitStorage
	case errors.Is(err, storage.ErrNotExist), errors.Is(err, storage.ErrInvalidKey):
		return ExitInput
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

// typeUsageErrors makes every command-line error of the tree a
// usageError: positional arguments (cobra.NoArgs, ExactArgs…), unknown
// subcommands, required flags and flag groups. Cobra reports those as
// plain errors, and only flag parsing has a hook (SetFlagErrorFunc), so
// each command's Args check is wrapped to do all of them, typed; cobra's
// own later checks then find nothing left to report.
func typeUsageErrors(root *cobra.Command) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if c.HasSubCommands() && !c.Runnable() {
			// A group: with arguments it was given an unknown subcommand
			// (cobra would print its help and exit 0), without any it
			// shows its help.
			c.Args = func(c *cobra.Command, args []string) error {
				if len(args) > 0 {
					return usagef("unknown command %q for %q", args[0], c.CommandPath())
				}
				return nil
			}
			c.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
			return
		}
		orig := c.Args
		c.Args = func(c *cobra.Command, args []string) error {
			if orig != nil {
				if err := orig(c, args); err != nil {
					return usageError{err.Error()}
				}
			}
			if err := c.ValidateRequiredFlags(); err != nil {
				return usageError{err.Error()}
			}
			if err := c.ValidateFlagGroups(); err != nil {
				return usageError{err.Error()}
			}
			return nil
		}
	}
	walk(root)
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
