package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/cedana/cedana/api/cedana/v1"
	"github.com/cedana/cedana/internal/config"
	"github.com/cedana/cedana/internal/jobs"
)

// policyFlags are the policy flags of run, manage and policy.
type policyFlags struct {
	every            time.Duration
	keep             int
	keepBytes        string
	restoreOnFailure bool
	maxRestores      int
	skipUnchanged    string
}

func (p *policyFlags) register(fs *pflag.FlagSet) {
	fs.Var(newDurationValue(&p.every), "checkpoint-every", "checkpoint the job periodically, e.g. 30s (default: policy.checkpoint_every)")
	fs.IntVar(&p.keep, "keep", 0, "keep the last N checkpoints (default: policy.keep)")
	fs.StringVar(&p.keepBytes, "keep-bytes", "", "keep at most this many bytes of checkpoints, e.g. 10GiB")
	fs.BoolVar(&p.restoreOnFailure, "restore-on-failure", false, "restore from the latest checkpoint when the job dies unexpectedly")
	fs.IntVar(&p.maxRestores, "max-restores", 0, "automatic restores before giving up (default: policy.max_restores)")
	fs.StringVar(&p.skipUnchanged, "skip-unchanged", "", `skip periodic checkpoints when the job did not change: safe, always or never (default: policy.skip_unchanged, else safe)`)
}

func (p *policyFlags) toPB() (*pb.Policy, error) {
	out := &pb.Policy{CheckpointEveryMs: p.every.Milliseconds(), Keep: int32(p.keep),
		RestoreOnFailure: p.restoreOnFailure, MaxRestores: int32(p.maxRestores), SkipUnchanged: p.skipUnchanged}
	if err := jobs.ValidSkipPolicy(p.skipUnchanged); err != nil {
		return nil, usagef("--skip-unchanged must be safe, always or never")
	}
	if p.every < 0 || p.keep < 0 || p.maxRestores < 0 {
		return nil, usagef("policy values must not be negative")
	}
	if p.every > 0 && p.every < time.Second {
		return nil, usagef("--checkpoint-every must be at least 1s")
	}
	if p.keepBytes != "" {
		n, err := config.ParseSize(p.keepBytes)
		if err != nil {
			return nil, usagef("--keep-bytes: %v", err)
		}
		out.KeepBytes = n
	}
	return out, nil
}

// client returns an API client, or a clear error when no daemon runs.
func (g *globals) client() (pb.CedanaClient, func(), error) {
	conn, err := g.dial()
	if err != nil {
		return nil, nil, err
	}
	return pb.NewCedanaClient(conn), func() { conn.Close() }, nil
}

// call makes one call to the daemon: method (an RPC of pb.CedanaClient,
// e.g. pb.CedanaClient.Manage) with req, over a connection of its own;
// the daemon's error comes back as the user's (rpcError).
func call[Req, Resp any](g *globals, method func(pb.CedanaClient, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	var none Resp
	c, done, err := g.client()
	if err != nil {
		return none, err
	}
	defer done()
	resp, err := method(c, context.Background(), req)
	if err != nil {
		return none, g.rpcError(err)
	}
	return resp, nil
}

func newRunCmd(g *globals) *cobra.Command {
	var (
		name  string
		pidns bool
		node  string
		pf    policyFlags
		cf    cloneFlags
	)
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARGS...] | run --from-template NAME [--count N]",
		Short: "Start CMD as a managed job (detached, own session, output to a log)",
		Args: func(cmd *cobra.Command, args []string) error {
			if cf.template != "" {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.MinimumNArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			pol, err := pf.toPB()
			if err != nil {
				return err
			}
			if cf.template != "" {
				if node != "" {
					return usagef("--node does not work with --from-template yet: clones start on the daemon's node")
				}
				return g.runFromTemplate(cf, name, pol)
			}
			c, done, err := g.client()
			if err != nil {
				return err
			}
			defer done()
			// Resolve the command here, with the user's PATH and working
			// directory, not the daemon's.
			wd, err := os.Getwd()
			if err != nil {
				return fmt.Errorf("current directory: %w", err)
			}
			argv := append([]string(nil), args...)
			if argv[0], err = resolveProgram(args[0], wd); err != nil {
				return err
			}
			j, err := c.Run(context.Background(), &pb.RunRequest{Name: name, Cmd: argv, Dir: wd, Env: jobs.JobEnv(os.Environ()),
				Policy: pol, PidNamespace: pidns, Node: node})
			if err != nil {
				return g.rpcError(err)
			}
			return g.printJob(j)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "job name (default: command name and a suffix)")
	cmd.Flags().BoolVar(&pidns, "pid-namespace", false, "run the job in its own PID namespace, so restores never clash on PIDs")
	cmd.Flags().StringVar(&node, "node", "", `cluster mode: start the job on this node, or "auto" (the ready node with fewest jobs, then most free memory); the command, its directory and environment must exist there`)
	cmd.Flags().StringVar(&cf.template, "from-template", "", "start clones of this template instead of CMD (--name is then their prefix)")
	cmd.Flags().IntVar(&cf.count, "count", 1, "with --from-template: how many clones")
	cmd.Flags().StringVar(&cf.ready, "ready", "", "with --from-template: wait until each clone passes this probe (tcp:PORT, http:/PATH, http:URL, file:PATH) and print its time-to-ready")
	cmd.Flags().DurationVar(&cf.timeout, "ready-timeout", time.Minute, "with --ready: how long to wait")
	cmd.Flags().StringArrayVar(&cf.publish, "publish", nil, "with --from-template: forward HOSTPORT on the host to the clone's PORT (HOSTPORT:PORT; clone i gets HOSTPORT+i)")
	cmd.Flags().BoolVar(&cf.lazy, "lazy", false, "with --from-template: restore before the memory (CRIU lazy pages), so start time does not grow with memory")
	pf.register(cmd.Flags())
	addOutputFlag(cmd, g)
	return cmd
}

func newManageCmd(g *globals) *cobra.Command {
	var (
		name string
		pf   policyFlags
	)
	cmd := &cobra.Command{
		Use:   "manage PID",
		Short: "Adopt a running process (and its children) as a managed job",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pid, err := strconv.Atoi(args[0])
			if err != nil || pid <= 0 {
				return usagef("want a process ID (a positive number), not %q", args[0])
			}
			pol, err := pf.toPB()
			if err != nil {
				return err
			}
			j, err := call(g, pb.CedanaClient.Manage, &pb.ManageRequest{Pid: int32(pid), Name: name, Policy: pol})
			if err != nil {
				return err
			}
			return g.printJob(j)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "job name (default: process name and PID)")
	pf.register(cmd.Flags())
	addOutputFlag(cmd, g)
	cmd.AddCommand(newManageContainerCmd(g, "docker"), newManageContainerCmd(g, "runc"))
	return cmd
}

func newManageContainerCmd(g *globals, runtime string) *cobra.Command {
	var (
		name string
		pf   policyFlags
	)
	cmd := &cobra.Command{
		Use:   runtime + " CONTAINER",
		Short: "Adopt a running " + runtime + " container as a managed job",
		Long: `Adopt a running ` + runtime + ` container as a job: its checkpoints are container
archives (config, writable layer, CRIU images), and its restores recreate
the container when it no longer exists. Policies work as for processes.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pol, err := pf.toPB()
			if err != nil {
				return err
			}
			j, err := call(g, pb.CedanaClient.ManageContainer, &pb.ManageContainerRequest{Runtime: runtime, Container: args[0], Name: name, Policy: pol})
			if err != nil {
				return err
			}
			return g.printJob(j)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "job name (default: the container's name)")
	pf.register(cmd.Flags())
	addOutputFlag(cmd, g)
	return cmd
}

func newPolicyCmd(g *globals) *cobra.Command {
	var pf policyFlags
	cmd := &cobra.Command{
		Use:   "policy JOB",
		Short: "Change a job's policy (periodic checkpoints, retention, restore on failure)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pol, err := pf.toPB()
			if err != nil {
				return err
			}
			j, err := call(g, pb.CedanaClient.UpdatePolicy, &pb.UpdatePolicyRequest{Job: args[0], Policy: pol})
			if err != nil {
				return err
			}
			return g.printJob(j)
		},
	}
	pf.register(cmd.Flags())
	addOutputFlag(cmd, g)
	return cmd
}

func newPsCmd(g *globals) *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List managed jobs (in cluster mode: every node's)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			resp, err := call(g, pb.CedanaClient.ListJobs, &pb.ListJobsRequest{Node: node})
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printProtoList(resp.GetJobs())
			}
			clustered := false
			for _, j := range resp.GetJobs() {
				clustered = clustered || j.GetNode() != ""
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			if clustered {
				fmt.Fprint(tw, "NODE\t")
			}
			fmt.Fprintln(tw, "ID\tNAME\tSTATE\tPID\tRSS\tCPU\tUPTIME\tLAST CHECKPOINT\tRESTORES")
			for _, j := range resp.GetJobs() {
				if clustered {
					fmt.Fprintf(tw, "%s\t", j.GetNode())
				}
				pid, rss, cpu, up := "-", "-", "-", "-"
				if j.GetState() == "running" {
					pid = strconv.Itoa(int(j.GetPid()))
					if j.GetStartedUnixMs() > 0 {
						rss = humanBytes(j.GetRssBytes())
						cpu = fmt.Sprintf("%.1f%%", j.GetCpuPercent())
						up = time.Since(time.UnixMilli(j.GetStartedUnixMs())).Round(time.Second).String()
					}
				}
				last := "-"
				if ms := j.GetLastCheckpointUnixMs(); ms > 0 {
					last = time.Since(time.UnixMilli(ms)).Round(time.Second).String() + " ago"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", j.GetId(), j.GetName(), j.GetState(), pid, rss, cpu, up, last, j.GetRestores())
			}
			return tw.Flush()
		},
	}
	addOutputFlag(cmd, g)
	cmd.Flags().StringVar(&node, "node", "", "cluster mode: only the jobs of this node")
	return cmd
}

func newLogsCmd(g *globals) *cobra.Command {
	var (
		follow bool
		tail   int64
	)
	cmd := &cobra.Command{
		Use:   "logs JOB",
		Short: "Print a job's output (continues across restores with -f)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, done, err := g.client()
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stream, err := c.Logs(ctx, &pb.LogsRequest{Job: args[0], Follow: follow, TailBytes: tail})
			if err != nil {
				return g.rpcError(err)
			}
			for {
				chunk, err := stream.Recv()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return g.rpcError(err)
				}
				if _, err := os.Stdout.Write(chunk.GetData()); err != nil {
					return nil // stdout closed (e.g. piped into head)
				}
			}
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().Int64Var(&tail, "tail-bytes", 0, "start this many bytes before the end")
	return cmd
}

func newKillCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kill JOB",
		Short: "Kill a job's processes (its checkpoints remain)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			j, err := call(g, pb.CedanaClient.KillJob, &pb.KillJobRequest{Job: args[0]})
			if err != nil {
				return err
			}
			return g.printJob(j)
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}

// resolveProgram returns the absolute path of the program name names, as
// the shell would find it from dir.
func resolveProgram(name, dir string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", usagef("%v", err)
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	return p, nil
}

func newRmCmd(g *globals) *cobra.Command {
	var force, checkpoints bool
	cmd := &cobra.Command{
		Use:   "rm [-f] [--checkpoints] JOB...",
		Short: "Remove jobs that no longer run, freeing their names (their archives stay unless --checkpoints)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, done, err := g.client()
			if err != nil {
				return err
			}
			defer done()
			var firstErr error
			for _, ref := range args {
				r, err := c.RemoveJob(context.Background(), &pb.RemoveJobRequest{Job: ref, Force: force, Checkpoints: checkpoints})
				if err != nil {
					if firstErr == nil {
						firstErr = g.rpcError(err)
					}
					fmt.Fprintf(os.Stderr, "cedana rm %s: %v\n", ref, g.rpcError(err))
					continue
				}
				if g.output == "json" {
					if err := printProto(r); err != nil {
						return err
					}
					continue
				}
				fmt.Printf("removed %s (%s)\n", r.GetJob().GetName(), r.GetJob().GetId())
				for _, p := range r.GetKeptArchives() {
					fmt.Printf("  kept %s (restore it with: cedana restore %s)\n", p, p)
				}
				for _, p := range r.GetRemovedArchives() {
					fmt.Printf("  deleted %s\n", p)
				}
			}
			return firstErr
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill the job first if it is running")
	cmd.Flags().BoolVar(&checkpoints, "checkpoints", false, "delete the job's checkpoint archives too")
	addOutputFlag(cmd, g)
	return cmd
}

func newDumpJobCmd(g *globals) *cobra.Command {
	var leaveRunning bool
	cmd := &cobra.Command{
		Use:   "job JOB",
		Short: "Checkpoint a managed job now (through the daemon)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ck, err := call(g, pb.CedanaClient.DumpJob, &pb.DumpJobRequest{Job: args[0], LeaveRunning: leaveRunning})
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printProto(ck)
			}
			fmt.Println(ck.GetPath())
			fmt.Fprintf(os.Stderr, "Checkpoint %s of job %s: %s in %.3fs.\n", ck.GetId(), args[0], humanBytes(ck.GetSize()), ck.GetDumpSeconds())
			return nil
		},
	}
	cmd.Flags().BoolVar(&leaveRunning, "leave-running", false, "keep the job running after the checkpoint")
	addOutputFlag(cmd, g)
	return cmd
}

func newRestoreJobCmd(g *globals) *cobra.Command {
	var ckpt string
	cmd := &cobra.Command{
		Use:   "job JOB",
		Short: "Restore a managed job from its latest checkpoint (or --checkpoint ID)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			j, err := call(g, pb.CedanaClient.RestoreJob, &pb.RestoreJobRequest{Job: args[0], CheckpointId: ckpt})
			if err != nil {
				return err
			}
			return g.printJob(j)
		},
	}
	cmd.Flags().StringVar(&ckpt, "checkpoint", "", "checkpoint ID (default: the latest complete one)")
	addOutputFlag(cmd, g)
	return cmd
}

func newCheckpointsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "checkpoints [JOB]",
		Short: "List checkpoints, newest first (of one job, or all)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			job := ""
			if len(args) == 1 {
				job = args[0]
			}
			resp, err := call(g, pb.CedanaClient.ListCheckpoints, &pb.ListCheckpointsRequest{Job: job})
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printProtoList(resp.GetCheckpoints())
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tJOB\tSTATE\tCREATED\tSIZE\tDUMP\tPATH")
			for _, ck := range resp.GetCheckpoints() {
				path := ck.GetPath()
				if ck.GetError() != "" {
					path = "error: " + truncate(ck.GetError(), 60)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.2fs\t%s\n", ck.GetId(), ck.GetJobId(), ck.GetState(),
					time.UnixMilli(ck.GetCreatedUnixMs()).Format(time.DateTime), humanBytes(ck.GetSize()), ck.GetDumpSeconds(), path)
			}
			return tw.Flush()
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}

func newCheckpointCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "checkpoint", Short: "Manage one checkpoint"}
	cmd.AddCommand(&cobra.Command{
		Use:   "rm ID",
		Short: "Delete a checkpoint and its archive",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := call(g, pb.CedanaClient.DeleteCheckpoint, &pb.DeleteCheckpointRequest{Id: args[0]}); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "Deleted checkpoint %s.\n", args[0])
			return nil
		},
	})
	cmd.AddCommand(newCheckpointExportCmd(g))
	return cmd
}

func newEventsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "events JOB",
		Short: "Show a job's history: starts, checkpoints, deaths, restores",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := call(g, pb.CedanaClient.ListEvents, &pb.ListEventsRequest{Job: args[0]})
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printProtoList(resp.GetEvents())
			}
			for _, e := range resp.GetEvents() {
				fmt.Printf("%s  %-16s %s\n", time.UnixMilli(e.GetUnixMs()).Format("2006-01-02 15:04:05.000"), e.GetType(), e.GetMessage())
			}
			return nil
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}

// printJob prints a job as one line, or as JSON with -o json.
func (g *globals) printJob(j *pb.Job) error {
	if g.output == "json" {
		return printProto(j)
	}
	fmt.Printf("%s\t%s\t%s\tpid %d\n", j.GetId(), j.GetName(), j.GetState(), j.GetPid())
	if j.GetPlacement() != "" {
		fmt.Printf("on node %s: %s\n", j.GetNode(), j.GetPlacement())
	}
	return nil
}

var jsonOpts = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

func printProto(m proto.Message) error {
	b, err := jsonOpts.Marshal(m)
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}

func printProtoList[T proto.Message](items []T) error {
	parts := make([]string, 0, len(items))
	for _, it := range items {
		b, err := jsonOpts.Marshal(it)
		if err != nil {
			return err
		}
		parts = append(parts, string(b))
	}
	fmt.Printf("[%s]\n", strings.Join(parts, ",\n"))
	return nil
}
