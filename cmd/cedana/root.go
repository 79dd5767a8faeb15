package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/config"
	"github.com/cedana/cedana/internal/criu"
)

// globals are the flags every command has.
type globals struct {
	verbose bool
	output  string // "" (human) or "json"
	address string // daemon: unix socket path or host:port
	// token is the bearer token for the daemon's TCP listener; empty:
	// $CEDANA_TOKEN, read when dialling (never a flag default, which
	// --help would print).
	token     string
	tokenFile string
	// settings are the flags bound to configuration keys, in the order
	// given; config.Load applies them last, with the same parsers as
	// files and the environment.
	settings []config.Override
}

func newRootCmd() *cobra.Command { return newRoot(&globals{}) }

// newRoot builds the command tree around g (tests keep g).
func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "cedana",
		Short:         "Checkpoint running Linux processes into a file and restore them later, or elsewhere",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       checkpoint.Version,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err.Error()} })
	pf := root.PersistentFlags()
	g.settingFlag(pf, "criu", "criu.path", "path of the criu binary (default: criu.path from config, else criu on PATH)")
	g.settingFlag(pf, "staging-dir", "staging_dir", "directory for CRIU images while an archive is written or read (default: /dev/shm when it has room)")
	g.settingFlag(pf, "log-dir", "log_dir", "directory for CRIU logs (default: log_dir from config)")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "log what cedana does to stderr")
	pf.StringVar(&g.address, "address", "", "the daemon: a unix socket path, or host:port for its TCP listener, which speaks TLS only (default: daemon.socket)")
	pf.StringVar(&g.token, "token", "", "bearer token for the daemon's TCP listener (default: $CEDANA_TOKEN; prefer --token-file: other users can read a command line)")
	pf.StringVar(&g.tokenFile, "token-file", "", "file holding the bearer token for the daemon's TCP listener")
	g.settingFlag(pf, "tls-ca", "tls.ca", "CA certificate (PEM) that signed the daemon's TLS certificate (default: tls.ca, $CEDANA_TLS_CA, else the system's roots)")
	g.settingFlag(pf, "tls-cert", "tls.cert", "client certificate (PEM) for a daemon that wants one (default: tls.cert, $CEDANA_TLS_CERT)")
	g.settingFlag(pf, "tls-key", "tls.key", "key of --tls-cert (PEM) (default: tls.key, $CEDANA_TLS_KEY)")

	dump := &cobra.Command{Use: "dump", Short: "Checkpoint a managed job through the daemon"}
	dump.AddCommand(newDumpJobCmd(g))
	restore := &cobra.Command{Use: "restore", Short: "Restore a managed job through the daemon"}
	restore.AddCommand(newRestoreJobCmd(g))
	root.AddCommand(newClientCmd(g), newCheckCmd(g), newInspectCmd(g), newConfigCmd(g),
		newDaemonCmd(g), newRunCmd(g), newManageCmd(g), newPolicyCmd(g), newPsCmd(g), newLogsCmd(g),
		newKillCmd(g), newRmCmd(g), dump, restore, newCheckpointsCmd(g), newCheckpointCmd(g), newEventsCmd(g),
		newNodesCmd(g), newNodeCmd(g), newMigrateCmd(g), newTemplateCmd(g), newBenchCmd(g))
	root.AddCommand(newStorageCmd(g))
	addContainerCmds(g, root, dump, restore)
	root.AddCommand(newGenManCmd())
	typeUsageErrors(root)
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

// load reads the configuration: files, environment, then the flags bound
// to settings.
func (g *globals) load() (*config.Loaded, error) {
	return config.Load(g.settings...)
}

// settingValue is a flag bound to a configuration key: it checks its
// value with the setting's own parser when parsed (a bad value is a usage
// error) and hands it to config.Load, which applies it after the files and
// the environment.
type settingValue struct {
	g       *globals
	setting config.Setting
	flag    string
	value   string
}

func (v *settingValue) String() string { return v.value }
func (v *settingValue) Type() string {
	switch k := v.setting.Kind; k {
	case "bool", "int", "size", "duration":
		return k
	}
	return "string"
}
func (v *settingValue) Set(s string) error {
	if err := v.setting.Check(s); err != nil {
		return err
	}
	v.value = s
	v.g.settings = append(v.g.settings, config.Override{Key: v.setting.Key, Value: s, Flag: "--" + v.flag})
	return nil
}

// durationValue is a duration flag that takes what a duration setting
// takes ("90s", or 90 seconds), through config.ParseDuration: for flags
// that override a setting per job (--checkpoint-every) rather than bind it.
type durationValue struct{ d *time.Duration }

func newDurationValue(d *time.Duration) *durationValue { return &durationValue{d} }

func (v *durationValue) String() string {
	if v.d == nil || *v.d == 0 {
		return ""
	}
	return v.d.String()
}
func (v *durationValue) Type() string { return "duration" }
func (v *durationValue) Set(s string) error {
	d, err := config.ParseDuration(s)
	if err != nil {
		return err
	}
	*v.d = d
	return nil
}

// settingFlag adds flag name to fs, bound to the configuration key.
func (g *globals) settingFlag(fs *pflag.FlagSet, name, key, usage string) *pflag.Flag {
	return g.settingFlagP(fs, name, "", key, usage)
}

// settingFlagP is settingFlag with a one-letter shorthand.
func (g *globals) settingFlagP(fs *pflag.FlagSet, name, short, key, usage string) *pflag.Flag {
	s, ok := config.Lookup(key)
	if !ok {
		panic("no configuration key " + key) // a programming error, caught by every test
	}
	fs.VarP(&settingValue{g: g, setting: s, flag: name}, name, short, usage)
	f := fs.Lookup(name)
	if s.Kind == "bool" {
		f.NoOptDefVal = "true"
	}
	return f
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
		KeepLogs:      cfg.CRIU.KeepLogs,
		MaxLogAge:     cfg.CRIU.MaxLogAge.Duration,
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
