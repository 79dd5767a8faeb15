package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/storage"
)

func newInspectCmd(g *globals) *cobra.Command {
	var verify bool
	cmd := &cobra.Command{
		Use:   "inspect FILE.zip|URL",
		Short: "Show what a checkpoint archive holds",
		Long: `Show an archive's manifest — a local file, or one in a store:
s3://bucket/key.zip, nats://host:port/bucket/key.zip, file:///path (read
with ranged reads; encrypted archives need storage.encryption.key_file):
when and where it was made, with which
versions, the process tree, open files, sockets and sizes. The structure
is always checked; --verify also checks every entry's size and digests (SHA-256 and XXH3-128).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			cfg, err := g.load()
			if err != nil {
				return err
			}
			ctx := context.Background()
			b, key, err := storageAt(ctx, &cfg.Config, args[0])
			if err != nil {
				return err
			}
			var size int64
			if b != nil {
				defer storage.CloseBackend(b)
				info, err := b.Stat(ctx, key)
				if err != nil {
					return err
				}
				size = info.Size
			} else {
				st, err := os.Stat(args[0])
				if err != nil {
					return fmt.Errorf("%w: %v", os.ErrNotExist, err)
				}
				size = st.Size()
			}
			bar := newProgress(g.output == "")
			m, err := g.service(cfg).InspectIn(ctx, b, key, args[0], verify, bar)
			bar.close()
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(map[string]any{"archive": args[0], "archive_size": size, "verified": verify, "manifest": m})
			}
			printManifest(args[0], size, m, verify)
			return nil
		},
	}
	cmd.Flags().BoolVar(&verify, "verify", false, "read every entry and check its size and digests (SHA-256, XXH3-128)")
	addOutputFlag(cmd, g)
	return cmd
}

func printManifest(path string, size int64, m *archive.Manifest, verified bool) {
	w := os.Stdout
	fmt.Fprintf(w, "Archive:   %s (%s; images %s uncompressed)\n", path, humanBytes(size), humanBytes(m.ImagesSize()))
	fmt.Fprintf(w, "Format:    version %d, kind %s", m.FormatVersion, m.Kind)
	if verified {
		fmt.Fprint(w, ", all entries verified")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Created:   %s by cedana %s with CRIU %s\n", m.Created.Format(time.RFC3339), m.Cedana, m.CRIU.VersionString)
	fmt.Fprintf(w, "Host:      %s (kernel %s, %s)\n", m.Host.Hostname, m.Host.Kernel, m.Host.Arch)
	if c := m.Container; c != nil {
		desc := fmt.Sprintf("%s container %s", c.Runtime, c.ID)
		if c.Name != "" {
			desc += " (" + c.Name + ")"
		}
		switch {
		case c.Image != "":
			desc += ", image " + c.Image
		case c.Bundle != "":
			desc += ", bundle " + c.Bundle
		}
		fmt.Fprintf(w, "Container: %s\n", desc)
	}
	var opts []string
	o := m.Options
	for _, kv := range []struct {
		on   bool
		name string
	}{{o.TCPEstablished, "tcp-established"}, {o.ShellJob, "shell-job"}, {o.ExtUnixSockets, "ext-unix-sk"},
		{o.FileLocks, "file-locks"}, {o.LinkRemap, "link-remap"}, {o.LeaveRunning, "leave-running"},
		{o.Streamable, "streamable"}} {
		if kv.on {
			opts = append(opts, kv.name)
		}
	}
	if o.NetworkLock != "" {
		opts = append(opts, "network-lock="+o.NetworkLock)
	}
	fmt.Fprintf(w, "Options:   %s\n", strings.Join(opts, ", "))
	if s := m.Stats; s != nil {
		fmt.Fprintf(w, "CRIU:      frozen %s, memory dump %s, %d pages written\n",
			time.Duration(s.FrozenTimeUS)*time.Microsecond, time.Duration(s.MemdumpTimeUS)*time.Microsecond, s.PagesWritten)
	}

	fmt.Fprintln(w, "\nProcesses:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  PID\tPPID\tUID\tRSS\tNAME\tCWD\tCOMMAND")
	for _, p := range m.Processes {
		fmt.Fprintf(tw, "  %d\t%d\t%d\t%s\t%s\t%s\t%s\n", p.PID, p.PPID, p.UID, humanBytes(int64(p.RSS)), p.Name, p.Cwd, truncate(strings.Join(p.Cmdline, " "), 60))
	}
	tw.Flush()

	fmt.Fprintln(w, "\nOpen files and sockets:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  PID\tFD\tTYPE\tTARGET")
	for _, p := range m.Processes {
		socks := map[int]archive.SocketInfo{}
		for _, s := range p.Sockets {
			socks[s.FD] = s
		}
		for _, f := range p.Files {
			target := f.Path
			if s, ok := socks[f.FD]; ok {
				target = fmt.Sprintf("%s %s %s", s.Family, s.State, s.Local)
				if s.Remote != "" && s.Family != "unix" {
					target += " -> " + s.Remote
				}
			}
			fmt.Fprintf(tw, "  %d\t%d\t%s\t%s\n", p.PID, f.FD, f.Type, target)
		}
	}
	tw.Flush()

	if len(m.CarriedFiles) > 0 {
		fmt.Fprintln(w, "\nCarried files:")
		for _, c := range m.CarriedFiles {
			fmt.Fprintf(w, "  %s (%s, mode %04o)\n", c.Path, humanBytes(c.Size), c.Mode)
		}
	}
	fmt.Fprintf(w, "\nEntries: %d\n", len(m.Entries))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, e := range m.Entries {
		d := e.Digest()
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", e.Name, humanBytes(e.Size), d[:min(16, len(d))])
	}
	tw.Flush()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
