package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestCall: a verb served on one node is called from another; replies,
// handler errors with their codes, stale epochs and absent nodes come back
// as the caller can branch on them.
func TestCall(t *testing.T) {
	nodes := startNodes(t, 2, 2*time.Second)
	errBusy := errors.New("busy")
	_, err := nodes[1].Serve("echo", 5*time.Second, func(err error) string {
		if errors.Is(err, errBusy) {
			return CodeFailedCondition
		}
		return CodeInternal
	}, func(ctx context.Context, req json.RawMessage) (any, error) {
		var in struct{ Say string }
		if err := json.Unmarshal(req, &in); err != nil {
			return nil, err
		}
		switch in.Say {
		case "busy":
			return nil, fmt.Errorf("job x: %w", errBusy)
		case "stale":
			return nil, fmt.Errorf("job x: %w", ErrStaleEpoch)
		}
		return map[string]string{"said": in.Say}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out struct{ Said string }
	if err := nodes[0].Call(ctx, "n1", "echo", map[string]string{"say": "hello"}, &out); err != nil || out.Said != "hello" {
		t.Fatalf("call: %v, %+v", err, out)
	}
	var re *RemoteError
	err = nodes[0].Call(ctx, "n1", "echo", map[string]string{"say": "busy"}, nil)
	if !errors.As(err, &re) || re.Code != CodeFailedCondition || re.Node != "n1" {
		t.Errorf("busy: %v, want a failed_precondition RemoteError from n1", err)
	}
	if err := nodes[0].Call(ctx, "n1", "echo", map[string]string{"say": "stale"}, nil); !errors.Is(err, ErrStaleEpoch) {
		t.Errorf("stale: %v, want ErrStaleEpoch through the wire", err)
	}
	if err := nodes[0].Call(ctx, "nobody", "echo", nil, nil); !errors.Is(err, ErrNodeUnreachable) {
		t.Errorf("absent node: %v, want ErrNodeUnreachable", err)
	}
}
