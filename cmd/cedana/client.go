package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/config"
	"github.com/cedana/cedana/internal/storage"
)

func newClientCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "client",
		Short: "Checkpoint and restore processes directly, without a daemon",
	}
	cmd.AddCommand(newDumpCmd(g), newRestoreCmd(g))
	return cmd
}

// criuFlags are the CRIU-related flags of dump. --ghost-limit and
// --network-lock are bound to criu.ghost_limit and criu.network_lock: they
// take the same values as the configuration, through the same parsers.
type criuFlags struct {
	tcpEstablished, shellJob bool
	extUnixSk, fileLocks     bool
	linkRemap                bool
}

func (f *criuFlags) register(g *globals, fs *pflag.FlagSet) {
	fs.BoolVar(&f.tcpEstablished, "tcp-established", false, "dump established TCP connections (default: on when the process has one; =false to force off)")
	fs.BoolVar(&f.shellJob, "shell-job", false, "allow a process attached to a terminal or a foreign session (default: detected; =false to force off)")
	fs.BoolVar(&f.extUnixSk, "ext-unix-sk", false, "allow unix sockets connected to processes outside the tree")
	fs.BoolVar(&f.fileLocks, "file-locks", false, "dump file locks held by the process")
	fs.BoolVar(&f.linkRemap, "link-remap", false, "allow CRIU to remap files it cannot reopen by name (linked/unlinked files)")
	g.settingFlag(fs, "ghost-limit", "criu.ghost_limit", "largest deleted-but-open file to copy into the checkpoint, e.g. 64MiB; 0: CRIU's default, 1MiB (default: criu.ghost_limit)")
	g.settingFlag(fs, "network-lock", "criu.network_lock", "how to lock TCP connections: nftables, iptables or skip (default: criu.network_lock, else nftables)")
}

// apply maps the flags onto a dump request. Flags the user did not set
// leave the automatic choice in place.
func (f *criuFlags) apply(fs *pflag.FlagSet, req *checkpoint.DumpRequest) error {
	if fs.Changed("tcp-established") {
		req.TCPEstablished = &f.tcpEstablished
	}
	if fs.Changed("shell-job") {
		req.ShellJob = &f.shellJob
	}
	req.ExtUnixSockets, req.FileLocks, req.LinkRemap = f.extUnixSk, f.fileLocks, f.linkRemap
	return nil
}

func newDumpCmd(g *globals) *cobra.Command {
	var (
		pidArg string
		cf     criuFlags
	)
	cmd := &cobra.Command{
		Use:   "dump -p PID [-d DIR]",
		Short: "Checkpoint a process tree into DIR/<name>_<time>.zip",
		Long: `Checkpoint the process PID and all its descendants into one archive,
DIR/<process_name>_<UTC time>.zip (mode 0600). The process is killed once
the archive is safely on disk, unless --leave-running is given. If the
checkpoint fails, the process keeps running.

CRIU options are chosen automatically (TCP connections, terminals, …);
the flags below override the choices.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			pid, err := strconv.Atoi(strings.TrimSpace(pidArg))
			if err != nil || pid <= 0 {
				return usagef("-p/--pid: want a process ID (a positive number), not %q", pidArg)
			}
			cfg, err := g.load()
			if err != nil {
				return err
			}
			req := checkpoint.DumpRequest{PID: pid, Dir: cfg.SharedStorage.DumpStorageDir,
				LeaveRunning: cfg.Client.LeaveRunning}
			if err := cf.apply(cmd.Flags(), &req); err != nil {
				return err
			}
			if err := requireRoot(); err != nil {
				return err
			}
			b, err := dumpStorage(context.Background(), &cfg.Config, cmd.Flags().Changed("dir"), &req)
			if err != nil {
				return err
			}
			if b != nil {
				defer storage.CloseBackend(b)
			}
			bar := newProgress(g.output == "")
			req.Progress = bar
			res, err := g.service(cfg).Dump(context.Background(), req)
			bar.close()
			if err != nil {
				return err
			}
			return printDump(g, res)
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&pidArg, "pid", "p", "", "PID of the process to checkpoint (with its children) (required)")
	_ = cmd.MarkFlagRequired("pid")
	g.settingFlagP(fs, "dir", "d", "shared_storage.dump_storage_dir", "where the archive goes: a directory, file:///dir, s3://bucket/prefix or nats://host:port/bucket (default: the storage.backend when not local, else shared_storage.dump_storage_dir)")
	g.settingFlag(fs, "leave-running", "client.leave_running", "keep the process running after the checkpoint (default: client.leave_running)")
	cf.register(g, fs)
	addOutputFlag(cmd, g)
	return cmd
}

func printDump(g *globals, res *checkpoint.DumpResult) error {
	m := res.Manifest
	if g.output == "json" {
		return printJSON(map[string]any{
			"path": res.Path, "size": res.Size, "pid": m.RootPID, "processes": len(m.Processes),
			"left_running": m.Options.LeaveRunning, "options": m.Options, "reasons": res.Reasons,
			"skipped_files": res.Skipped, "criu_seconds": res.CRIUTime.Seconds(),
			"archive_seconds": res.ArchiveTime.Seconds(), "total_seconds": res.Total.Seconds(),
			"criu_log": res.LogPath,
		})
	}
	for _, r := range res.Reasons {
		fmt.Fprintf(os.Stderr, "note: %s\n", r)
	}
	for _, s := range res.Skipped {
		fmt.Fprintf(os.Stderr, "warning: %s is open for writing but too large to carry in the archive; a restore needs it in place\n", s)
	}
	state := "stopped"
	if m.Options.LeaveRunning {
		state = "left running"
	}
	fmt.Printf("%s\n", res.Path)
	fmt.Fprintf(os.Stderr, "Checkpointed PID %d (%s, %d process(es)) into %s in %s; the process was %s.\n",
		m.RootPID, m.Processes[0].Name, len(m.Processes), humanBytes(res.Size), res.Total.Round(time.Millisecond), state)
	return nil
}

func newRestoreCmd(g *globals) *cobra.Command {
	var replace bool
	cmd := &cobra.Command{
		Use:   "restore FILE.zip|URL",
		Short: "Restore a process tree from an archive",
		Long: `Verify FILE.zip, or the archive at URL (s3://bucket/key.zip,
nats://host:port/bucket/key.zip, file:///path), for integrity, format
version and CRIU compatibility, then
restore its process tree, detached from this terminal unless it was a
shell job. Prints the restored PID. The archive is never modified or
removed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			cfg, err := g.load()
			if err != nil {
				return err
			}
			if !storage.IsURL(args[0]) {
				if _, err := os.Stat(args[0]); err != nil {
					return fmt.Errorf("%w: %v", checkpoint.ErrInvalidInput, err)
				}
			}
			if err := requireRoot(); err != nil {
				return err
			}
			b, key, err := storageAt(context.Background(), &cfg.Config, args[0])
			if err != nil {
				return err
			}
			if b != nil {
				defer storage.CloseBackend(b)
			}
			req := checkpoint.RestoreRequest{Path: args[0], Storage: b, Key: key, ReplaceFiles: replace}
			if term.IsTerminal(int(os.Stdin.Fd())) {
				req.TTY = os.Stdin // a shell job comes back on this terminal
			}
			bar := newProgress(g.output == "")
			req.Progress = bar
			res, err := g.service(cfg).Restore(context.Background(), req)
			bar.close()
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(map[string]any{
					"pid": res.PID, "archive": args[0], "files_written": res.FilesWritten,
					"extract_seconds": res.ExtractTime.Seconds(), "criu_seconds": res.CRIUTime.Seconds(),
					"total_seconds": res.Total.Seconds(), "criu_log": res.LogPath,
				})
			}
			for _, f := range res.FilesWritten {
				fmt.Fprintf(os.Stderr, "note: put back %s from the archive\n", f)
			}
			fmt.Printf("%d\n", res.PID)
			fmt.Fprintf(os.Stderr, "Restored %s as PID %d in %s.\n", res.Manifest.Processes[0].Name, res.PID, res.Total.Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().BoolVar(&replace, "replace-files", false, "overwrite files that changed since the checkpoint with the archived copy (the current one is kept as FILE.cedana-bak-TIME)")
	g.settingFlag(cmd.Flags(), "pid-wait", "client.pid_wait", "how long to wait for the process's old PIDs to be released, e.g. 30s (default: client.pid_wait, 10s)")
	addOutputFlag(cmd, g)
	return cmd
}

// requireRoot refuses early, with the fix, when not running as root.
func requireRoot() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: CRIU needs root; run with sudo", errNotReady)
	}
	return nil
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// dumpStorage points req at a storage backend when the archive goes to one:
// -d (or shared_storage.dump_storage_dir) is a URL, or -d was not given
// and storage.backend is not local (archives then go under "dumps/").
// It returns the backend to close, or nil for a local directory.
func dumpStorage(ctx context.Context, c *config.Config, dirGiven bool, req *checkpoint.DumpRequest) (storage.Backend, error) {
	var (
		b   storage.Backend
		err error
	)
	switch dir := c.SharedStorage.DumpStorageDir; {
	case storage.IsURL(dir):
		sc, perr := storage.Destination(dir, storageConfig(c))
		if perr != nil {
			return nil, usageError{"-d: " + perr.Error()}
		}
		b, err = storage.Open(ctx, sc, "")
	case !dirGiven:
		b, err = configuredStorage(ctx, c)
		req.KeyPrefix = "dumps/"
	}
	if err != nil || b == nil {
		return nil, err
	}
	req.Storage = b
	return b, nil
}
