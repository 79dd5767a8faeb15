package daemon

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/jobs"
	"github.com/cedana/cedana/internal/store"
)

// TestToStatus: errors become the gRPC codes the API documents, wrapped or not.
func TestToStatus(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("job x: %w", err) }
	cases := []struct {
		err  error
		code codes.Code
	}{
		{wrap(store.ErrNotFound), codes.NotFound},
		{wrap(store.ErrExists), codes.AlreadyExists},
		{wrap(jobs.ErrIllegalTransition), codes.FailedPrecondition},
		{wrap(jobs.ErrNoCheckpoint), codes.FailedPrecondition},
		{wrap(&criu.Error{Op: "dump", Err: errors.New("x")}), codes.FailedPrecondition},
		{wrap(store.ErrInvalid), codes.InvalidArgument},
		{wrap(checkpoint.ErrInvalidInput), codes.InvalidArgument},
		{wrap(checkpoint.ErrPIDBusy), codes.Unavailable},
		{wrap(archive.ErrCorrupt), codes.DataLoss},
		{wrap(context.Canceled), codes.Canceled},
		{errors.New("boom"), codes.Internal},
		{status.Error(codes.PermissionDenied, "no"), codes.PermissionDenied},
	}
	for _, c := range cases {
		if got := status.Code(toStatus(c.err)); got != c.code {
			t.Errorf("toStatus(%v) = %v, want %v", c.err, got, c.code)
		}
	}
	if toStatus(nil) != nil {
		t.Error("toStatus(nil) != nil")
	}
}
