package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/cedana/cedana/api/cedana/v1"
)

// newTemplateCmd is `cedana template create|ls|rm`.
func newTemplateCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "template", Short: "Manage warm templates: checkpoints that clones start from (cedana run --from-template)"}
	var (
		job, from string
		pid       int
	)
	create := &cobra.Command{
		Use:   "create NAME (--job JOB | -p PID | --from FILE.zip)",
		Short: "Make a template of a running job or process (which keeps running), or of a checkpoint archive",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			n := 0
			for _, set := range []bool{job != "", pid != 0, from != ""} {
				if set {
					n++
				}
			}
			if n != 1 {
				return usagef("give exactly one of --job, -p/--pid and --from")
			}
			if pid < 0 {
				return usagef("-p wants a positive process ID")
			}
			if from != "" {
				abs, err := filepath.Abs(from)
				if err != nil {
					return err
				}
				from = abs // the daemon opens it
			}
			start := time.Now()
			t, err := call(g, pb.CedanaClient.CreateTemplate, &pb.CreateTemplateRequest{Name: args[0], Job: job, Pid: int32(pid), From: from})
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printProto(t)
			}
			fmt.Printf("template %s: %s, %s archive, made in %s\n", t.GetName(), t.GetSource(), humanBytes(t.GetSize()), time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	create.Flags().StringVar(&job, "job", "", "the managed job to make the template of (it keeps running)")
	create.Flags().IntVarP(&pid, "pid", "p", 0, "the process to make the template of (the init of its own PID namespace; it keeps running)")
	create.Flags().StringVar(&from, "from", "", "a checkpoint archive to import as the template")
	addOutputFlag(create, g)

	ls := &cobra.Command{
		Use:   "ls",
		Short: "List templates (in a cluster or with a shared storage backend: every node's), with where each lives",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			resp, err := call(g, pb.CedanaClient.ListTemplates, &pb.ListTemplatesRequest{})
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printProtoList(resp.GetTemplates())
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSOURCE\tNODE\tSIZE\tRSS\tPROCESSES\tLISTENS\tCREATED\tLOCATION")
			for _, t := range resp.GetTemplates() {
				node := t.GetNode()
				if node == "" {
					node = "-"
				}
				ports := "-"
				for i, p := range t.GetListen() {
					if i == 0 {
						ports = ""
					} else {
						ports += ","
					}
					ports += strconv.Itoa(int(p))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", t.GetName(), t.GetSource(), node, humanBytes(t.GetSize()), humanBytes(t.GetRssBytes()),
					t.GetProcesses(), ports, time.UnixMilli(t.GetCreatedUnixMs()).Format(time.RFC3339), t.GetLocation())
			}
			return tw.Flush()
		},
	}
	addOutputFlag(ls, g)

	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a template, from the shared store if it is in one (its running clones go on)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if _, err := call(g, pb.CedanaClient.RemoveTemplate, &pb.RemoveTemplateRequest{Name: args[0]}); err != nil {
				return err
			}
			fmt.Printf("template %s removed\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, ls, rm)
	return cmd
}

// cloneFlags are run's --from-template flags.
type cloneFlags struct {
	template string
	count    int
	ready    string
	timeout  time.Duration
	lazy     bool
	publish  []string
}

// runFromTemplate is `cedana run --from-template NAME`.
func (g *globals) runFromTemplate(cf cloneFlags, prefix string, pol *pb.Policy) error {
	if err := g.checkOutput(); err != nil {
		return err
	}
	if cf.count < 1 {
		return usagef("--count must be at least 1")
	}
	resp, err := call(g, pb.CedanaClient.RunFromTemplate, &pb.RunFromTemplateRequest{Template: cf.template, Count: int32(cf.count),
		Prefix: prefix, Ready: cf.ready, ReadyTimeoutMs: cf.timeout.Milliseconds(), Lazy: cf.lazy, Policy: pol, Publish: cf.publish})
	if err != nil {
		return err
	}
	failed := 0
	for _, cl := range resp.GetClones() {
		if cl.GetError() != "" {
			failed++
		}
	}
	if g.output == "json" {
		if err := printProto(resp); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tID\tPID\tADDRESS\tRESTORED\tREADY\tRSS AT READY\tERROR")
		for _, cl := range resp.GetClones() {
			j := cl.GetJob()
			addr, ready := j.GetAddress(), "-"
			if addr == "" {
				addr = "-"
			}
			for _, p := range cl.GetPublished() {
				addr += " (host :" + strings.Split(p, ":")[0] + ")"
			}
			if cl.GetReadyUs() > 0 {
				ready = (time.Duration(cl.GetReadyUs()) * time.Microsecond).Round(time.Millisecond).String()
			}
			msg := cl.GetError()
			if msg == "" {
				msg = "-"
			}
			rss := "-"
			if cl.GetRssAtReadyBytes() > 0 {
				rss = humanBytes(cl.GetRssAtReadyBytes())
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", j.GetName(), j.GetId(), j.GetPid(), addr,
				(time.Duration(cl.GetRestoreUs()) * time.Microsecond).Round(time.Millisecond), ready, rss, msg)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d clones failed", failed, len(resp.GetClones()))
	}
	return nil
}
