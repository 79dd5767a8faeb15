package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	pb "github.com/cedana/cedana/api/cedana/v1"
	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/storage"
)

// newCheckpointExportCmd is `cedana checkpoint export`: a self-contained
// archive of any checkpoint, deduplicated or not.
func newCheckpointExportCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "export ID|PATH|URL FILE.zip",
		Short: "Write a checkpoint as a self-contained archive",
		Long: `Write a checkpoint as an ordinary, self-contained archive that
'cedana client restore' and 'cedana inspect' read anywhere. The checkpoint
is named by its ID (as 'cedana checkpoints' lists it; asks the daemon
where it lives) or by its path or URL. A daemon's job checkpoints are
stored deduplicated (their memory frames shared with the job's other
checkpoints); the export assembles the archive from its chunks, checking
every chunk's SHA-256 and then every entry's digests before FILE.zip
appears. FILE.zip must not exist.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			ctx := context.Background()
			src, err := g.checkpointLocation(ctx, args[0])
			if err != nil {
				return err
			}
			b, key, err := storageAt(ctx, &cfg.Config, src)
			if err != nil {
				return err
			}
			var obj io.ReaderAt
			var size int64
			if b == nil {
				f, err := os.Open(src)
				if err != nil {
					return err
				}
				defer f.Close()
				st, err := f.Stat()
				if err != nil {
					return err
				}
				obj, size = f, st.Size()
			} else {
				defer storage.CloseBackend(b)
				o, err := b.Open(ctx, key)
				if err != nil {
					return err
				}
				defer o.Close()
				obj, size = o, o.Size()
			}
			if err := archive.Export(obj, size, args[1]); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "Exported %s to %s (%s, verified).\n", src, args[1], humanBytes(size))
			return nil
		},
	}
}

// checkpointLocation returns arg when it is a path or URL, else the path
// of the checkpoint whose ID it is.
func (g *globals) checkpointLocation(ctx context.Context, arg string) (string, error) {
	if storage.IsURL(arg) {
		return arg, nil
	}
	if _, err := os.Stat(arg); err == nil {
		return arg, nil
	}
	c, done, err := g.client()
	if err != nil {
		return "", fmt.Errorf("%s is no file or URL, and the daemon cannot be asked for a checkpoint of that ID: %w", arg, err)
	}
	defer done()
	resp, err := c.ListCheckpoints(ctx, &pb.ListCheckpointsRequest{})
	if err != nil {
		return "", g.rpcError(err)
	}
	for _, ck := range resp.GetCheckpoints() {
		if ck.GetId() != arg {
			continue
		}
		if ck.GetState() != "complete" {
			return "", usageError{fmt.Sprintf("checkpoint %s is %s, not complete", arg, ck.GetState())}
		}
		return ck.GetPath(), nil
	}
	return "", fmt.Errorf("%w: no checkpoint, file or URL %s", os.ErrNotExist, arg)
}
