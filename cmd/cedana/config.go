package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/cedana/cedana/internal/config"
)

func newConfigCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Show the configuration"}
	cmd.AddCommand(&cobra.Command{
		Use:   "show",
		Short: "Print the effective configuration as JSON, and where it came from",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			fmt.Println(cfg.JSON())
			fmt.Fprintf(os.Stderr, "sources (lowest precedence first): defaults")
			for _, s := range cfg.Sources {
				fmt.Fprintf(os.Stderr, ", %s", s)
			}
			fmt.Fprintf(os.Stderr, "\nfiles read if present: %s, %s\n", config.SystemFile, config.UserFile())
			return nil
		},
	})
	return cmd
}
