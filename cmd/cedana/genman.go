package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newGenManCmd is the hidden `cedana gen-man DIR`: man pages for every
// command, generated from the command tree itself, so they cannot drift
// from --help. `make install` runs it. SOURCE_DATE_EPOCH, when set, dates
// the pages (reproducible builds).
func newGenManCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "gen-man DIR",
		Short:  "Write a man page for every command into DIR (used by make install)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true
			escapeForMarkdown(root)
			hdr := &doc.GenManHeader{Title: "CEDANA", Section: "1", Source: "cedana " + root.Version, Manual: "Cedana manual"}
			if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
				if secs, err := strconv.ParseInt(s, 10, 64); err == nil {
					d := time.Unix(secs, 0).UTC()
					hdr.Date = &d
				}
			}
			if err := doc.GenManTree(root, hdr, args[0]); err != nil {
				return fmt.Errorf("gen-man: %w", err)
			}
			return nil
		},
	}
}

// escapeForMarkdown keeps "<name>" in help texts from being taken for
// HTML, and "a_b_c" for emphasis, by the markdown-to-roff conversion.
// gen-man is a one-shot command: changing the tree is harmless.
func escapeForMarkdown(c *cobra.Command) {
	r := strings.NewReplacer("<", `\<`, ">", `\>`, "_", `\_`, "*", `\*`)
	c.Short, c.Long = r.Replace(c.Short), r.Replace(c.Long)
	for _, sub := range c.Commands() {
		escapeForMarkdown(sub)
	}
}
