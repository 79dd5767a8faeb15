package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cedana/cedana/internal/config"
	"github.com/cedana/cedana/internal/container"
	"github.com/cedana/cedana/internal/criu"
)

// addContainerCmds registers the container commands: `run runc`,
// `dump docker|runc` and `restore docker|runc`.
func addContainerCmds(g *globals, root, dump, restore *cobra.Command) {
	if run, _, err := root.Find([]string{"run"}); err == nil && run != root {
		run.AddCommand(newRunRuncCmd(g))
	}
	dump.AddCommand(newDumpContainerCmd(g, container.Docker), newDumpContainerCmd(g, container.Runc))
	restore.AddCommand(newRestoreContainerCmd(g, container.Docker), newRestoreContainerCmd(g, container.Runc))
}

// containerFlags are the runtime-locating flags shared by the container
// commands.
type containerFlags struct {
	dockerHost string
	runcRoot   string
}

func (f *containerFlags) register(fs *pflag.FlagSet, runtime string) {
	switch runtime {
	case container.Docker:
		fs.StringVar(&f.dockerHost, "docker-host", "", "the Docker engine: unix:///path, or tcp://127.0.0.1:port on loopback only (no TLS) (default: $DOCKER_HOST, else unix:///var/run/docker.sock)")
	case container.Runc:
		fs.StringVar(&f.runcRoot, "runc-root", "", "runc's state directory, as runc --root (default: runc's, /run/runc)")
	}
}

// checkDockerHost refuses a Docker engine reached over TCP anywhere but
// loopback: cedana speaks plain HTTP to it, and Docker's API gives root to
// whoever can use it, so the connection would be open to the network.
func checkDockerHost(host, from string) error {
	rest, ok := strings.CutPrefix(host, "tcp://")
	if !ok {
		return nil
	}
	h, _, err := net.SplitHostPort(strings.TrimSuffix(rest, "/"))
	if err != nil {
		h = rest
	}
	if ip := net.ParseIP(h); h == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	return usagef("%s is %s: cedana talks to Docker without TLS, so only a unix socket or a loopback tcp:// address is accepted "+
		"(reach a remote engine through an SSH tunnel: ssh -L 2375:/var/run/docker.sock HOST, then tcp://127.0.0.1:2375)", from, host)
}

// containerService builds the container engine from the configuration.
func (g *globals) containerService(cfg *config.Loaded, f *containerFlags) (*container.Service, error) {
	if err := checkDockerHost(f.dockerHost, "--docker-host"); err != nil {
		return nil, err
	}
	if f.dockerHost == "" {
		if err := checkDockerHost(os.Getenv("DOCKER_HOST"), "$DOCKER_HOST"); err != nil {
			return nil, err
		}
	}
	var w io.Writer = io.Discard
	if g.verbose {
		w = os.Stderr
	}
	return container.NewService(container.Settings{
		CRIUPath:    cfg.CRIU.Path,
		LogDir:      cfg.LogDir,
		StagingDir:  cfg.StagingDir,
		NetworkLock: criu.NetworkLock(cfg.CRIU.NetworkLock),
		RuncRoot:    f.runcRoot,
		StateDir:    filepath.Join(cfg.Daemon.StateDir, "runc"),
		DockerHost:  f.dockerHost,
		Engine:      g.service(cfg), // the same staging, work dirs, checks and hooks as processes
	}, slog.New(slog.NewTextHandler(w, nil))), nil
}

// notReady marks a missing or unreachable runtime for the exit code,
// keeping the message as is.
type notReady struct{ error }

func (e notReady) Unwrap() []error { return []error{e.error, errNotReady} }

func containerErr(err error) error {
	if errors.Is(err, container.ErrUnavailable) {
		return notReady{err}
	}
	return err
}

func newRunRuncCmd(g *globals) *cobra.Command {
	var (
		req container.RunRequest
		cf  containerFlags
	)
	cmd := &cobra.Command{
		Use:   "runc --bundle DIR --id ID",
		Short: "Start an OCI bundle with runc, ready to be checkpointed",
		Long: `Start the OCI bundle DIR (config.json and its rootfs) as runc container ID,
detached. The container gets a writable overlay layer of its own (the
bundle's rootfs is not modified), and its stdout and stderr are logged to
<state_dir>/runc/logs/ID.log through pipes, which CRIU can checkpoint
(host files on stdio cannot be). Prints the container's PID.

Checkpoint it with ` + "`cedana dump runc --id ID`" + `.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			cfg, err := g.load()
			if err != nil {
				return err
			}
			if err := requireRoot(); err != nil {
				return err
			}
			svc, err := g.containerService(cfg, &cf)
			if err != nil {
				return err
			}
			res, err := svc.RunRunc(context.Background(), req)
			if err != nil {
				return containerErr(err)
			}
			if g.output == "json" {
				return printJSON(map[string]any{"id": res.ID, "pid": res.PID, "log": res.Log, "state_dir": res.StateDir})
			}
			fmt.Printf("%d\n", res.PID)
			fmt.Fprintf(os.Stderr, "Started runc container %s as PID %d; output in %s.\n", res.ID, res.PID, res.Log)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&req.Bundle, "bundle", "", "the OCI bundle directory (required)")
	fs.StringVar(&req.ID, "id", "", "the container's ID (required)")
	_ = cmd.MarkFlagRequired("bundle")
	_ = cmd.MarkFlagRequired("id")
	cf.register(fs, container.Runc)
	addOutputFlag(cmd, g)
	return cmd
}

func newDumpContainerCmd(g *globals, runtime string) *cobra.Command {
	var (
		req            container.DumpRequest
		cf             containerFlags
		tcpEstablished bool
		id             string
	)
	cmd := &cobra.Command{
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			req.Runtime = runtime
			switch {
			case runtime == container.Runc && id == "" && len(args) == 1:
				req.Container = args[0]
			case runtime == container.Runc && id != "" && len(args) == 0:
				req.Container = id
			case runtime == container.Runc:
				return usagef("give the container's ID once: --id ID")
			default:
				req.Container = args[0]
			}
			if cmd.Flags().Changed("tcp-established") {
				req.TCPEstablished = &tcpEstablished
			}
			cfg, err := g.load()
			if err != nil {
				return err
			}
			if req.Dir == "" {
				req.Dir = cfg.SharedStorage.DumpStorageDir
			}
			if err := requireRoot(); err != nil {
				return err
			}
			bar := newProgress(g.output == "")
			req.Progress = bar
			svc, err := g.containerService(cfg, &cf)
			if err != nil {
				return err
			}
			res, err := svc.Dump(context.Background(), req)
			bar.close()
			if err != nil {
				return containerErr(err)
			}
			return printContainerDump(g, res)
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&req.Dir, "dir", "d", "", "directory for the archive (default: shared_storage.dump_storage_dir)")
	fs.BoolVar(&req.LeaveRunning, "leave-running", false, "restart the container in place once the archive is written")
	cf.register(fs, runtime)
	addOutputFlag(cmd, g)
	switch runtime {
	case container.Docker:
		cmd.Use = "docker CONTAINER [-d DIR]"
		cmd.Short = "Checkpoint a running Docker container into DIR/<name>_<time>.zip"
		cmd.Long = `Checkpoint the running Docker container CONTAINER (name or ID) through the
engine's API into one archive: CRIU's images, the container's
configuration and the changes of its writable layer. The container is
stopped, as by ` + "`docker checkpoint create`" + `; if anything fails before the
archive is on disk, it is restored in place and runs again.

The engine must run with experimental features (checkpoints need them)
on this machine, with the overlay2 storage driver.`
	case container.Runc:
		cmd.Use = "runc --id ID [-d DIR]"
		cmd.Short = "Checkpoint a running runc container into DIR/<id>_<time>.zip"
		cmd.Long = `Checkpoint the running runc container ID into one archive: CRIU's images,
the bundle's config.json and the changes to its rootfs. The container is
stopped; if anything fails before the archive is on disk, it is restored
in place and runs again. Established TCP connections are detected and
kept (--tcp-established=false to drop them).`
		cmd.Args = cobra.MaximumNArgs(1)
		fs.StringVar(&id, "id", "", "the container's ID")
		fs.BoolVar(&tcpEstablished, "tcp-established", false, "keep established TCP connections (default: when the container has one)")
		fs.BoolVar(&req.ExtUnixSockets, "ext-unix-sk", false, "allow unix sockets connected to processes outside the container")
		fs.BoolVar(&req.FileLocks, "file-locks", false, "checkpoint file locks")
	}
	return cmd
}

func printContainerDump(g *globals, res *container.DumpResult) error {
	m := res.Manifest
	c := m.Container
	if g.output == "json" {
		return printJSON(map[string]any{
			"path": res.Path, "size": res.Size, "runtime": c.Runtime, "id": c.ID, "name": c.Name,
			"image": c.Image, "pid": m.RootPID, "processes": len(m.Processes), "left_running": m.Options.LeaveRunning,
			"notes": res.Notes, "layer_entries": res.Layer.Entries, "layer_bytes": res.Layer.Bytes,
			"checkpoint_seconds": res.CheckpointTime.Seconds(), "layer_seconds": res.LayerTime.Seconds(),
			"archive_seconds": res.ArchiveTime.Seconds(), "resume_seconds": res.ResumeTime.Seconds(),
			"total_seconds": res.Total.Seconds(),
		})
	}
	for _, n := range res.Notes {
		fmt.Fprintf(os.Stderr, "note: %s\n", n)
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(os.Stderr, "warning: %s\n", w)
	}
	name := c.Name
	if name == "" {
		name = c.ID
	}
	state := "stopped"
	if m.Options.LeaveRunning {
		state = "restarted in place"
	}
	fmt.Println(res.Path)
	fmt.Fprintf(os.Stderr, "Checkpointed %s container %s (%d process(es), %d layer entries) into %s in %s; the container was %s.\n",
		c.Runtime, name, len(m.Processes), res.Layer.Entries, humanBytes(res.Size), res.Total.Round(time.Millisecond), state)
	return nil
}

func newRestoreContainerCmd(g *globals, runtime string) *cobra.Command {
	var (
		req container.RestoreRequest
		cf  containerFlags
	)
	cmd := &cobra.Command{
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			req.Path, req.Runtime = args[0], runtime
			cfg, err := g.load()
			if err != nil {
				return err
			}
			if _, err := os.Stat(req.Path); err != nil {
				return fmt.Errorf("%w: %v", os.ErrNotExist, err)
			}
			if err := requireRoot(); err != nil {
				return err
			}
			bar := newProgress(g.output == "")
			req.Progress = bar
			svc, err := g.containerService(cfg, &cf)
			if err != nil {
				return err
			}
			res, err := svc.Restore(context.Background(), req)
			bar.close()
			if err != nil {
				return containerErr(err)
			}
			if g.output == "json" {
				return printJSON(map[string]any{
					"id": res.ID, "name": res.Name, "pid": res.PID, "created": res.Created, "archive": req.Path,
					"notes": res.Notes, "extract_seconds": res.ExtractTime.Seconds(), "prepare_seconds": res.PrepareTime.Seconds(),
					"restore_seconds": res.RestoreTime.Seconds(), "total_seconds": res.Total.Seconds(),
				})
			}
			for _, n := range res.Notes {
				fmt.Fprintf(os.Stderr, "note: %s\n", n)
			}
			for _, w := range res.Warnings {
				fmt.Fprintf(os.Stderr, "warning: %s\n", w)
			}
			fmt.Println(res.ID)
			fmt.Fprintf(os.Stderr, "Restored %s container %s as PID %d in %s.\n", runtime, res.Name, res.PID, res.Total.Round(time.Millisecond))
			return nil
		},
	}
	fs := cmd.Flags()
	cf.register(fs, runtime)
	addOutputFlag(cmd, g)
	switch runtime {
	case container.Docker:
		cmd.Use = "docker FILE.zip [--name NAME]"
		cmd.Short = "Restore a Docker container from an archive"
		cmd.Long = `Verify FILE.zip, recreate its container from the same image (which must be
on this machine) if it no longer exists, put back the changes of its
writable layer and start it from the checkpoint. With --name, the
container is restored under a new name: a clone, which may run beside
the original. Prints the container's ID.`
		fs.StringVar(&req.Name, "name", "", "name of the restored container (default: the original name)")
	case container.Runc:
		cmd.Use = "runc FILE.zip [--id ID] [--bundle DIR]"
		cmd.Short = "Restore a runc container from an archive"
		cmd.Long = `Verify FILE.zip and restore its container with runc, detached, on a new
writable layer (holding the archived changes) over the rootfs of the
original bundle, or of --bundle DIR. With --id, the container is restored
under a new ID: a clone. Prints the container's ID.`
		fs.StringVar(&req.Name, "id", "", "ID of the restored container (default: the original ID)")
		fs.StringVar(&req.Bundle, "bundle", "", "bundle whose rootfs is the container's base (default: the original bundle)")
	}
	return cmd
}
