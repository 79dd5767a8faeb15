package checkpoint

import (
	"context"
	"fmt"
	"runtime"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/storage"
)

// Inspect reads an archive's manifest after checking its structure. With
// verify, it also reads every entry and checks its size and every digest the manifest records.
func (s *Service) Inspect(ctx context.Context, path string, verify bool, prog Progress) (*archive.Manifest, error) {
	return s.InspectIn(ctx, nil, "", path, verify, prog)
}

// InspectIn is Inspect of the object key in backend (when backend is not
// nil; path then names it in messages).
func (s *Service) InspectIn(ctx context.Context, backend storage.Backend, key, path string, verify bool, prog Progress) (*archive.Manifest, error) {
	r, _, err := s.openArchive(ctx, backend, key, path)
	if err != nil {
		return nil, err
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
