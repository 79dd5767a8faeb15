// Command cedana checkpoints running Linux processes into portable
// archives and restores them. See README.md for usage.
package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"

	"github.com/cedana/cedana/internal/cluster"
	"github.com/cedana/cedana/internal/criu"
)

func main() {
	// runc runs `cedana criu-bridge` as its CRIU when a container's
	// memory streams (see internal/criu/bridge.go). It is no user
	// command: it must leave stdio alone (a restored container's) and
	// read no configuration.
	if len(os.Args) > 1 && os.Args[1] == criu.BridgeCommand {
		os.Exit(criu.RunBridge(os.Args[2:]))
	}
	// The daemon's fence watchdog in cluster mode (internal/cluster/watchdog.go).
	if len(os.Args) > 1 && os.Args[1] == cluster.WatchdogCommand {
		os.Exit(cluster.RunWatchdog(os.Args[2:]))
	}
	// CEDANA_CPUPROFILE=FILE writes a CPU profile of the run (for
	// `go tool pprof`; see CONTRIBUTING.md); %p in FILE becomes the PID.
	if path := os.Getenv("CEDANA_CPUPROFILE"); path != "" {
		path = strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid()))
		if f, err := os.Create(path); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				code := run(os.Args[1:])
				pprof.StopCPUProfile()
				f.Close()
				os.Exit(code)
			}
			f.Close()
		}
	}
	os.Exit(run(os.Args[1:]))
}

// run executes the CLI and returns the process exit code. A panic is a
// bug: it is reported as one, without a stack trace for the user.
func run(args []string) (code int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "cedana: internal error: %v\nThis is a bug; please report it with the command you ran.\n", r)
			code = ExitInternal
		}
	}()
	root := newRootCmd()
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err != nil {
		return report(cmd, err)
	}
	return ExitOK
}
