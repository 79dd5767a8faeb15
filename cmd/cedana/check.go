package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cedana/cedana/internal/criu"
)

func newCheckCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Report whether this machine can checkpoint, and which features work",
		Long: `Check for CRIU, its version, 'criu check', and the kernel features that
matter: incremental pre-dumps (soft-dirty), lazy restore (userfaultfd),
the network lock for TCP connections, PID namespaces. Exits 0 when every
required item is there, 5 otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			cfg, err := g.load()
			if err != nil {
				return err
			}
			rep := criu.New(cfg.CRIU.Path).Check(context.Background())
			if g.output == "json" {
				if err := printJSON(map[string]any{"ready": rep.Ready(), "criu_path": rep.CRIUPath,
					"criu_version": rep.CRIUVersion, "items": rep.Items}); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "CHECK\tSTATUS\tDETAIL")
				for _, it := range rep.Items {
					status := "ok"
					switch {
					case !it.OK && it.Required:
						status = "MISSING"
					case !it.OK:
						status = "unavailable"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\n", it.Name, status, it.Detail)
				}
				tw.Flush()
			}
			if !rep.Ready() {
				return fmt.Errorf("%w: see the MISSING items above", errNotReady)
			}
			return nil
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}
