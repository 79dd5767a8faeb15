package checkpoint

import (
	"context"
	"fmt"
	"runtime"

	"github.com/cedana/cedana/internal/archive"
)

// Inspect reads an archive's manifest after checking its structure. With
// verify, it also reads every entry and checks its size and every digest the manifest records.
func (s *Service) Inspect(ctx context.Context, path string, verify bool, prog Progress) (*archive.Manifest, error) {
	r, err := archive.Open(path, archive.DefaultLimits())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	defer r.Close()
	if verify {
		if prog == nil {
			prog = NoProgress{}
		}
		prog.Start("verifying", r.Manifest.TotalSize())
		err := r.Verify(archive.ExtractOptions{Progress: prog.Advance, Concurrency: runtime.NumCPU()})
		prog.Done()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return r.Manifest, nil
}
