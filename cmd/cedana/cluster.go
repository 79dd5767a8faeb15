package main

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/cedana/cedana/api/cedana/v1"
)

// newNodesCmd lists the cluster's nodes.
func newNodesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List the nodes of the daemon's cluster, with their state and capacity",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			resp, err := call(g, pb.CedanaClient.ListNodes, &pb.ListNodesRequest{})
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printProtoList(resp.GetNodes())
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tLAST HEARTBEAT\tCPUS\tFREE MEMORY\tRUNNING JOBS\tCRIU")
			for _, n := range resp.GetNodes() {
				ago := time.Since(time.UnixMilli(n.GetLastHeartbeatUnixMs())).Round(100*time.Millisecond).String() + " ago"
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%s\n", n.GetName(), n.GetState(), ago, n.GetCpus(),
					humanBytes(int64(n.GetFreeMemory())), n.GetRunningJobs(), n.GetCriuVersion())
			}
			return tw.Flush()
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}

// newMigrateCmd moves a job to another node.
func newMigrateCmd(g *globals) *cobra.Command {
	var to string
	var lazy bool
	cmd := &cobra.Command{
		Use:   "migrate JOB --to NODE",
		Short: "Move a running job to another node of the cluster (stop-and-copy, or --lazy post-copy)",
		Long: `Move a running job to another node: it is checkpointed and kept stopped
here, its archive travels through the cluster's JetStream object store and
is verified on arrival, the target restores it stopped, the job's
ownership moves to the target (a compare-and-set on its epoch), and only
then does the target resume its copy and this node kill the stopped one.
Exit 0 once the job runs on NODE; otherwise the job runs where it was and
the error says why. Plain jobs should run with --pid-namespace, so that
their PIDs never clash on the target. A runc container job becomes runc
container ID-NODE on the target (its bundle's rootfs must be at the same
path there); Docker container jobs do not migrate.

With --lazy (process jobs), the archive leaves the memory out: the job
resumes on NODE at once and its memory follows from this node, on touch
and in the background; the command returns once all of it has arrived.
Should the memory stop arriving, the target kills its copy and the job
runs here again from the moment of the checkpoint. The source needs
fs.pipe-max-size ≥ 4194304 (make setup sets it).`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			resp, err := call(g, pb.CedanaClient.Migrate, &pb.MigrateRequest{Job: args[0], To: to, Lazy: lazy})
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printProto(resp)
			}
			fmt.Printf("job %s runs on node %s (PID %d) since %s; downtime %s, %s moved, total %s, epoch %d\n",
				resp.GetJob().GetName(), resp.GetTo(), resp.GetJob().GetPid(), resp.GetFrom(),
				time.Duration(resp.GetDowntimeMs())*time.Millisecond, humanBytes(resp.GetBytes()),
				time.Duration(resp.GetTotalMs())*time.Millisecond, resp.GetEpoch())
			if lazy {
				fmt.Printf("its memory followed from %s, all of it %s after the resume\n", resp.GetFrom(),
					time.Duration(resp.GetMemoryMs())*time.Millisecond)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the node to move the job to")
	cmd.Flags().BoolVar(&lazy, "lazy", false, "post-copy: resume on NODE before the memory has arrived (downtime does not grow with memory; planned moves only, see docs/cluster.md)")
	_ = cmd.MarkFlagRequired("to")
	addOutputFlag(cmd, g)
	return cmd
}
