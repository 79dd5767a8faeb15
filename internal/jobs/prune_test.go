package jobs

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/store"
)

// TestPrune: retention keeps the newest Keep complete checkpoints within
// KeepBytes (always the newest one), removes the others' archives and
// records, and keeps only the newest few failed records.
func TestPrune(t *testing.T) {
	cases := []struct {
		name      string
		policy    store.Policy
		sizes     []int64 // complete checkpoints, oldest first
		wantKept  int
		failedIn  int
		wantFails int
	}{
		{"keep 2", store.Policy{Keep: 2}, []int64{10, 10, 10, 10}, 2, 0, 0},
		{"keep all", store.Policy{}, []int64{10, 10, 10}, 3, 0, 0},
		{"bytes", store.Policy{KeepBytes: 25}, []int64{10, 10, 10, 10}, 2, 0, 0},
		{"newest always kept", store.Policy{KeepBytes: 5}, []int64{10, 10}, 1, 0, 0},
		{"failed records capped", store.Policy{}, []int64{10}, 1, 8, 5},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			st := store.NewMemory()
			m := New(Config{CheckpointDir: t.TempDir(), LogDir: t.TempDir()}, st, nil, nil, nil, nil)
			defer m.Close()
			j := &store.Job{Name: "j", State: string(Running), Policy: c.policy}
			if err := st.CreateJob(ctx, j); err != nil {
				t.Fatal(err)
			}
			base := time.Now().Add(-time.Hour)
			var paths []string
			for i, size := range c.sizes {
				p := filepath.Join(t.TempDir(), "a.zip")
				if err := os.WriteFile(p, make([]byte, size), 0o600); err != nil {
					t.Fatal(err)
				}
				paths = append(paths, p)
				ck := &store.Checkpoint{JobID: j.ID, State: store.CheckpointComplete, Path: p, Size: size,
					CreatedAt: base.Add(time.Duration(i) * time.Minute)}
				if err := st.PutCheckpoint(ctx, ck); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < c.failedIn; i++ {
				ck := &store.Checkpoint{JobID: j.ID, State: store.CheckpointFailed, CreatedAt: base.Add(time.Duration(i) * time.Second)}
				if err := st.PutCheckpoint(ctx, ck); err != nil {
					t.Fatal(err)
				}
			}
			m.prune(j)
			cs, _ := st.ListCheckpoints(ctx, j.ID)
			var kept, fails int
			for _, ck := range cs {
				switch ck.State {
				case store.CheckpointComplete:
					kept++
				case store.CheckpointFailed:
					fails++
				}
			}
			if kept != c.wantKept || fails != c.wantFails {
				t.Errorf("kept %d complete and %d failed, want %d and %d", kept, fails, c.wantKept, c.wantFails)
			}
			// The newest archive always survives; pruned archives are gone.
			if _, err := os.Stat(paths[len(paths)-1]); err != nil {
				t.Errorf("newest archive removed: %v", err)
			}
			gone := 0
			for _, p := range paths {
				if _, err := os.Stat(p); os.IsNotExist(err) {
					gone++
				}
			}
			if gone != len(c.sizes)-c.wantKept {
				t.Errorf("%d archives removed, want %d", gone, len(c.sizes)-c.wantKept)
			}
		})
	}
}

func TestSanitizeJobName(t *testing.T) {
	for in, want := range map[string]string{"web": "web", "my app/1": "my-app-1", "job-x": "c-job-x", "": "c-"} {
		if got := SanitizeJobName(in); got != want {
			t.Errorf("SanitizeJobName(%q) = %q, want %q", in, got, want)
		}
		if err := validName(SanitizeJobName(in)); err != nil {
			t.Errorf("SanitizeJobName(%q) is not a valid name: %v", in, err)
		}
	}
}
