package main

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/cedana/cedana/api/cedana/v1"
)

// newNodeCmd groups the commands that change a node of the cluster.
func newNodeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Drain a node of the cluster or make it ready again",
	}
	cmd.AddCommand(newNodeDrainCmd(g), newNodeResumeCmd(g))
	return cmd
}

func newNodeDrainCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "drain NODE",
		Short: "Mark NODE draining and migrate each of its running jobs to another node",
		Long: `Mark NODE draining — it takes no new job (run --node, --node auto,
migrations to it), and the mark survives a restart of its daemon — then
migrate its running jobs away one by one, each to the ready node with the
fewest jobs (then the most free memory), as cedana migrate does: jobs keep
their IDs and names. A job whose target refuses it is tried on the next
ready node (up to three). Prints where each job went, or why it stayed;
exits non-zero when any job stayed. Draining again retries those.
Works from any node: the command reaches NODE's daemon, which must run.`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			resp, err := call(g, pb.CedanaClient.DrainNode, &pb.DrainNodeRequest{Node: args[0]})
			if err != nil {
				return err
			}
			stayed := 0
			for _, j := range resp.GetJobs() {
				if j.GetTo() == "" {
					stayed++
				}
			}
			if g.output == "json" {
				if err := printProto(resp); err != nil {
					return err
				}
			} else {
				printDrain(args[0], resp)
			}
			if stayed > 0 {
				return fmt.Errorf("%d of %d running jobs stayed on node %s (see above); it stays draining", stayed, len(resp.GetJobs()), args[0])
			}
			return nil
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}

// printDrain shows a drain's outcome as a table.
func printDrain(node string, resp *pb.DrainNodeResponse) {
	fmt.Printf("node %s is %s; %d running jobs\n", node, resp.GetNode().GetState(), len(resp.GetJobs()))
	if len(resp.GetJobs()) == 0 {
		return
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tTO\tDOWNTIME\tWHY")
	for _, j := range resp.GetJobs() {
		to, down, why := j.GetTo(), (time.Duration(j.GetDowntimeMs()) * time.Millisecond).String(), j.GetPlacement()
		if to == "" {
			to, down = "-", "-"
		}
		if j.GetError() != "" {
			if why != "" {
				why += "; "
			}
			why += j.GetError()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", j.GetName(), to, down, why)
	}
	_ = tw.Flush()
}

func newNodeResumeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "resume NODE",
		Short: "Make a draining NODE ready again (it takes new jobs)",
		Long: `Make a draining NODE ready again: it takes new jobs again. Jobs that
moved away during the drain stay where they are. Works from any node.`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			resp, err := call(g, pb.CedanaClient.ResumeNode, &pb.ResumeNodeRequest{Node: args[0]})
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printProto(resp)
			}
			fmt.Printf("node %s is %s\n", args[0], resp.GetNode().GetState())
			return nil
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}
