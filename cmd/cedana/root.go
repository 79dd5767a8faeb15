package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/config"
	"github.com/cedana/cedana/internal/criu"
)

// globals are the flags every command has.
type globals struct {
	criuPath   string
	stagingDir string
	logDir     string
	verbose    bool
	output     string // "" (human) or "json"
	address    string // daemon: unix socket path or host:port
	token      string // daemon over TCP: bearer token
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "cedana",
		Short:         "Checkpoint running Linux processes into a file and restore them later, or elsewhere",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       checkpoint.Version,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err.Error()} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.criuPath, "criu", "", "path of the criu binary (default: criu.path from config, else criu on PATH)")
	pf.StringVar(&g.stagingDir, "staging-dir", "", "directory for CRIU images while an archive is written or read (default: /dev/shm when it has room)")
	pf.StringVar(&g.logDir, "log-dir", "", "directory for CRIU logs (default: log_dir from config)")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "log what cedana does to stderr")
	pf.StringVar(&g.address, "address", "", "the daemon: a unix socket path, or host:port for its TCP listener (default: daemon.socket)")
	pf.StringVar(&g.token, "token", os.Getenv("CEDANA_TOKEN"), "bearer token for the daemon's TCP listener (default: $CEDANA_TOKEN)")

	dump := &cobra.Command{Use: "dump", Short: "Checkpoint a managed job through the daemon"}
	dump.AddCommand(newDumpJobCmd(g))
	restore := &cobra.Command{Use: "restore", Short: "Restore a managed job through the daemon"}
	restore.AddCommand(newRestoreJobCmd(g))
	root.AddCommand(newClientCmd(g), newCheckCmd(g), newInspectCmd(g), newConfigCmd(g),
		newDaemonCmd(g), newRunCmd(g), newManageCmd(g), newPolicyCmd(g), newPsCmd(g), newLogsCmd(g),
		newKillCmd(g), newRmCmd(g), dump, restore, newCheckpointsCmd(g), newCheckpointCmd(g), newEventsCmd(g))
	addContainerCmds(g, root, dump, restore)
	return root
}

// addOutputFlag adds -o/--output to a command.
func addOutputFlag(cmd *cobra.Command, g *globals) {
	cmd.Flags().StringVarP(&g.output, "output", "o", "", `output format: "json" for machine-readable output`)
}

func (g *globals) checkOutput() error {
	if g.output != "" && g.output != "json" {
		return usagef("unknown output format %q (want json)", g.output)
	}
	return nil
}

// load reads the configuration and applies the global flags to it.
func (g *globals) load() (*config.Loaded, error) {
	cfg, err := config.Load()
	if err != nil {
		return nil, err
	}
	if g.criuPath != "" {
		cfg.CRIU.Path = g.criuPath
	}
	if g.stagingDir != "" {
		cfg.StagingDir = g.stagingDir
	}
	if g.logDir != "" {
		cfg.LogDir = g.logDir
	}
	if !criu.NetworkLock(cfg.CRIU.NetworkLock).Valid() {
		return nil, fmt.Errorf("config: criu.network_lock is %q; want nftables, iptables or skip", cfg.CRIU.NetworkLock)
	}
	return cfg, nil
}

// service builds the engine from the configuration.
func (g *globals) service(cfg *config.Loaded) *checkpoint.Service {
	var w io.Writer = io.Discard
	if g.verbose {
		w = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(w, nil))
	return checkpoint.NewService(checkpoint.Settings{
		CRIUPath:      cfg.CRIU.Path,
		LogDir:        cfg.LogDir,
		StagingDir:    cfg.StagingDir,
		NetworkLock:   criu.NetworkLock(cfg.CRIU.NetworkLock),
		GhostLimit:    uint64(cfg.CRIU.GhostLimit),
		Stream:        cfg.CRIU.Stream,
		CarryFileMax:  cfg.Client.CarryFileMaxBytes,
		CarryTotalMax: cfg.Client.CarryTotalMaxBytes,
		PIDWait:       cfg.Client.PIDWait.Duration,
		Hooks: checkpoint.Hooks{PreDump: cfg.Hooks.PreDump, PostDump: cfg.Hooks.PostDump,
			PreRestore: cfg.Hooks.PreRestore, PostRestore: cfg.Hooks.PostRestore},
	}, log)
}

// printJSON writes v as indented JSON to stdout.
func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
