package daemon

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cedana/cedana/internal/cluster"
	"github.com/cedana/cedana/internal/jobs"
	"github.com/cedana/cedana/internal/store"
)

// TestRemoteErrorsKeepTheirStatus: an error a node's handler returns
// reaches the caller with the gRPC status the local API would give it,
// so that the CLI's exit codes are the same for a local and a remote job.
func TestRemoteErrorsKeepTheirStatus(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("job x: %w", store.ErrNotFound), codes.NotFound},
		{fmt.Errorf("%w: cannot dump", jobs.ErrIllegalTransition), codes.FailedPrecondition},
		{fmt.Errorf("%w; job x still runs on node a", errMigrationFailed), codes.Aborted},
		{status.Error(codes.InvalidArgument, "bad"), codes.InvalidArgument},
		{errors.New("disk on fire"), codes.Internal},
	} {
		code := remoteCode(tc.err)
		got := fromRemote(&cluster.RemoteError{Node: "b", Verb: "get", Code: code, Message: tc.err.Error()})
		if status.Code(got) != tc.want {
			t.Errorf("%v: came back as %v (%v), want %v", tc.err, status.Code(got), got, tc.want)
		}
	}
	if code := remoteCode(fmt.Errorf("x: %w", cluster.ErrStaleEpoch)); code != cluster.CodeStaleEpoch {
		t.Errorf("a stale epoch travels as %q", code)
	}
	if err := fromRemote(fmt.Errorf("%w: nobody", cluster.ErrNodeUnreachable)); status.Code(err) != codes.Unavailable {
		t.Errorf("an unreachable node: %v", err)
	}
}
