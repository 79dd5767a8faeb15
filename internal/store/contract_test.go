package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// impls are the Store implementations that every contract test runs
// against.
var impls = []struct {
	name string
	open func(t testing.TB) Store
}{
	{"bolt", func(t testing.TB) Store {
		s, err := Open(filepath.Join(t.TempDir(), "state", "cedana.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}},
	{"memory", func(t testing.TB) Store {
		s := NewMemory()
		t.Cleanup(func() { _ = s.Close() })
		return s
	}},
}

// forEachImpl runs test against a fresh store of each implementation.
func forEachImpl(t *testing.T, test func(t *testing.T, s Store)) {
	t.Helper()
	for _, impl := range impls {
		t.Run(impl.name, func(t *testing.T) {
			t.Parallel()
			test(t, impl.open(t))
		})
	}
}

var ctx = context.Background()

// mustJob creates a job named name and returns it.
func mustJob(t testing.TB, s Store, name string) *Job {
	t.Helper()
	j := &Job{Name: name, State: "running", PID: 4711, Cmd: []string{"sleep", "100"}}
	if err := s.CreateJob(ctx, j); err != nil {
		t.Fatalf("create job %s: %v", name, err)
	}
	return j
}

func wantErr(t *testing.T, err, want error) {
	t.Helper()
	if want == nil && err != nil || !errors.Is(err, want) {
		t.Fatalf("error = %v, want %v", err, want)
	}
}

func TestCreateAndGetJob(t *testing.T) {
	forEachImpl(t, func(t *testing.T, s Store) {
		code := 3
		a := &Job{Name: "a", PID: 10, StartTime: 99, Cmd: []string{"x", "y"}, ExitCode: &code,
			Policy: Policy{CheckpointEvery: time.Minute, Keep: 3, RestoreOnFailure: true}}
		if err := s.CreateJob(ctx, a); err != nil {
			t.Fatal(err)
		}
		if a.ID == "" || a.CreatedAt.IsZero() || !a.UpdatedAt.Equal(a.CreatedAt) {
			t.Fatalf("CreateJob did not fill in ID and times: %+v", a)
		}
		explicit := time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC)
		b := &Job{ID: "job-b", Name: "b", CreatedAt: explicit}
		if err := s.CreateJob(ctx, b); err != nil {
			t.Fatal(err)
		}
		if !b.CreatedAt.Equal(explicit) {
			t.Fatalf("CreateJob overwrote CreatedAt: %v", b.CreatedAt)
		}

		for _, tc := range []struct {
			key    string
			wantID string
			err    error
		}{
			{key: a.ID, wantID: a.ID},
			{key: "a", wantID: a.ID},
			{key: "job-b", wantID: "job-b"},
			{key: "b", wantID: "job-b"},
			{key: "nope", err: ErrNotFound},
			{key: "", err: ErrNotFound},
		} {
			got, err := s.GetJob(ctx, tc.key)
			if tc.err != nil {
				wantErr(t, err, tc.err)
				continue
			}
			if err != nil || got.ID != tc.wantID {
				t.Fatalf("GetJob(%q) = %+v, %v; want ID %s", tc.key, got, err, tc.wantID)
			}
		}
		got, _ := s.GetJob(ctx, "a")
		if got.PID != 10 || got.StartTime != 99 || got.ExitCode == nil || *got.ExitCode != 3 ||
			!slices.Equal(got.Cmd, a.Cmd) || got.Policy != a.Policy || got.CreatedAt != a.CreatedAt {
			t.Fatalf("GetJob = %+v, want %+v", got, a)
		}
		// The caller owns what it gets.
		got.Cmd[0] = "changed"
		if again, _ := s.GetJob(ctx, "a"); again.Cmd[0] != "x" {
			t.Fatal("modifying a returned job changed the store")
		}
	})
}

func TestCreateJobRejects(t *testing.T) {
	forEachImpl(t, func(t *testing.T, s Store) {
		mustJob(t, s, "taken")
		if err := s.CreateJob(ctx, &Job{ID: "job-1", Name: "one"}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			job  *Job
			err  error
		}{
			{"duplicate name", &Job{Name: "taken"}, ErrExists},
			{"duplicate ID", &Job{ID: "job-1", Name: "other"}, ErrExists},
			{"name is another job's ID", &Job{Name: "job-1"}, ErrExists},
			{"ID is another job's name", &Job{ID: "taken", Name: "fresh"}, ErrExists},
			{"empty name", &Job{ID: "job-2"}, ErrInvalid},
			{"nil", nil, ErrInvalid},
		} {
			t.Run(tc.name, func(t *testing.T) { wantErr(t, s.CreateJob(ctx, tc.job), tc.err) })
		}
		if jobs, _ := s.ListJobs(ctx); len(jobs) != 2 {
			t.Fatalf("%d jobs after rejected creates, want 2", len(jobs))
		}
	})
}

func TestUpdateJob(t *testing.T) {
	abort := errors.New("abort")
	for _, tc := range []struct {
		name     string
		fn       func(*Job) error
		err      error
		wantName string // after the update; "a" when unchanged
	}{
		{"state", func(j *Job) error { j.State = "dumping"; j.Restores++; return nil }, nil, "a"},
		{"rename", func(j *Job) error { j.Name = "renamed"; return nil }, nil, "renamed"},
		{"rename to own ID", func(j *Job) error { j.Name = j.ID; return nil }, nil, "<id>"},
		{"abort", func(j *Job) error { j.State = "lost"; j.Name = "lost"; return abort }, abort, "a"},
		{"rename to taken name", func(j *Job) error { j.Name = "b"; return nil }, ErrExists, "a"},
		{"rename to another ID", func(j *Job) error { j.Name = "job-b"; return nil }, ErrExists, "a"},
		{"empty name", func(j *Job) error { j.Name = ""; return nil }, ErrInvalid, "a"},
		{"change ID", func(j *Job) error { j.ID = "job-z"; return nil }, ErrInvalid, "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forEachImpl(t, func(t *testing.T, s Store) {
				a := mustJob(t, s, "a")
				if err := s.CreateJob(ctx, &Job{ID: "job-b", Name: "b"}); err != nil {
					t.Fatal(err)
				}
				wantName := tc.wantName
				if wantName == "<id>" {
					wantName = a.ID
				}
				time.Sleep(time.Millisecond) // so that UpdatedAt visibly moves
				got, err := s.UpdateJob(ctx, a.ID, tc.fn)
				wantErr(t, err, tc.err)
				stored, gerr := s.GetJob(ctx, wantName)
				if gerr != nil || stored.ID != a.ID {
					t.Fatalf("GetJob(%q) = %+v, %v; want job %s", wantName, stored, gerr, a.ID)
				}
				if tc.err != nil {
					if got != nil || stored.State != "running" || !stored.UpdatedAt.Equal(a.UpdatedAt) {
						t.Fatalf("failed update changed the job: returned %+v, stored %+v", got, stored)
					}
					return
				}
				if !stored.UpdatedAt.After(a.UpdatedAt) || !got.UpdatedAt.Equal(stored.UpdatedAt) ||
					got.Name != stored.Name || got.State != stored.State {
					t.Fatalf("UpdateJob returned %+v, stored %+v", got, stored)
				}
				if wantName != "a" {
					wantErr(t, func() error { _, err := s.GetJob(ctx, "a"); return err }(), ErrNotFound)
					mustJob(t, s, "a") // the old name is free again
				}
			})
		})
	}
	t.Run("unknown", func(t *testing.T) {
		forEachImpl(t, func(t *testing.T, s Store) {
			mustJob(t, s, "a")
			_, err := s.UpdateJob(ctx, "a", func(*Job) error { return nil }) // by name: IDs only
			wantErr(t, err, ErrNotFound)
		})
	})
}

func TestListJobsOrder(t *testing.T) {
	forEachImpl(t, func(t *testing.T, s Store) {
		if jobs, err := s.ListJobs(ctx); err != nil || jobs == nil || len(jobs) != 0 {
			t.Fatalf("ListJobs on empty store = %v, %v; want empty, non-nil", jobs, err)
		}
		base := time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)
		for _, j := range []*Job{
			{ID: "j3", Name: "n3", CreatedAt: base.Add(3 * time.Second)},
			{ID: "j1", Name: "n1", CreatedAt: base.Add(1 * time.Second)},
			{ID: "j2b", Name: "n2b", CreatedAt: base.Add(2 * time.Second)},
			{ID: "j2a", Name: "n2a", CreatedAt: base.Add(2 * time.Second)},
			{ID: "j0", Name: "n0", CreatedAt: base.In(time.FixedZone("X", 3600))},
		} {
			if err := s.CreateJob(ctx, j); err != nil {
				t.Fatal(err)
			}
		}
		jobs, err := s.ListJobs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, j := range jobs {
			ids = append(ids, j.ID)
		}
		if want := []string{"j0", "j1", "j2a", "j2b", "j3"}; !slices.Equal(ids, want) {
			t.Fatalf("ListJobs order = %v, want %v", ids, want)
		}
	})
}

func TestDeleteJobCascades(t *testing.T) {
	forEachImpl(t, func(t *testing.T, s Store) {
		a, b := mustJob(t, s, "a"), mustJob(t, s, "b")
		for _, j := range []*Job{a, b} {
			for i := range 3 {
				if err := s.PutCheckpoint(ctx, &Checkpoint{JobID: j.ID, State: CheckpointComplete}); err != nil {
					t.Fatal(err)
				}
				if _, err := s.AddEvent(ctx, Event{JobID: j.ID, Type: "started", Message: fmt.Sprint(i)}); err != nil {
					t.Fatal(err)
				}
			}
		}
		cps, _ := s.ListCheckpoints(ctx, a.ID)
		if err := s.DeleteJob(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		wantErr(t, s.DeleteJob(ctx, a.ID), ErrNotFound)
		for _, key := range []string{a.ID, "a"} {
			_, err := s.GetJob(ctx, key)
			wantErr(t, err, ErrNotFound)
		}
		for _, c := range cps {
			_, err := s.GetCheckpoint(ctx, c.ID)
			wantErr(t, err, ErrNotFound)
		}
		if all, _ := s.ListCheckpoints(ctx, ""); len(all) != 3 || all[0].JobID != b.ID {
			t.Fatalf("after delete, all checkpoints = %d, want b's 3", len(all))
		}
		if ev, _ := s.ListEvents(ctx, b.ID, 0, 0); len(ev) != 3 {
			t.Fatalf("b has %d events, want 3", len(ev))
		}
		// The name is free, and a job re-created with the same ID starts afresh.
		again := &Job{ID: a.ID, Name: "a"}
		if err := s.CreateJob(ctx, again); err != nil {
			t.Fatal(err)
		}
		if cps, _ := s.ListCheckpoints(ctx, a.ID); len(cps) != 0 {
			t.Fatalf("re-created job has %d checkpoints", len(cps))
		}
		e, err := s.AddEvent(ctx, Event{JobID: a.ID, Type: "started"})
		if err != nil || e.Seq != 1 {
			t.Fatalf("first event of re-created job = %+v, %v; want seq 1", e, err)
		}
	})
}

func TestCheckpoints(t *testing.T) {
	forEachImpl(t, func(t *testing.T, s Store) {
		a, b := mustJob(t, s, "a"), mustJob(t, s, "b")
		base := time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)
		for _, c := range []*Checkpoint{
			{ID: "c1", JobID: a.ID, CreatedAt: base.Add(1 * time.Second)},
			{ID: "c3", JobID: a.ID, CreatedAt: base.Add(3 * time.Second)},
			{ID: "c2a", JobID: a.ID, CreatedAt: base.Add(2 * time.Second)},
			{ID: "c2b", JobID: a.ID, CreatedAt: base.Add(2 * time.Second)},
			{ID: "b1", JobID: b.ID, CreatedAt: base.Add(4 * time.Second)},
		} {
			if err := s.PutCheckpoint(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		auto := &Checkpoint{JobID: b.ID, State: CheckpointPending, Path: "/tmp/x.tar"}
		if err := s.PutCheckpoint(ctx, auto); err != nil || auto.ID == "" || auto.CreatedAt.IsZero() {
			t.Fatalf("PutCheckpoint without ID/time = %+v, %v", auto, err)
		}
		ids := func(jobID string) []string {
			t.Helper()
			cps, err := s.ListCheckpoints(ctx, jobID)
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, c := range cps {
				out = append(out, c.ID)
			}
			return out
		}
		for _, tc := range []struct {
			jobID string
			want  []string
		}{
			{a.ID, []string{"c3", "c2b", "c2a", "c1"}},
			{b.ID, []string{auto.ID, "b1"}},
			{"", []string{auto.ID, "b1", "c3", "c2b", "c2a", "c1"}},
		} {
			if got := ids(tc.jobID); !slices.Equal(got, tc.want) {
				t.Errorf("ListCheckpoints(%q) = %v, want %v", tc.jobID, got, tc.want)
			}
		}

		// Replace: complete the pending one, and move c1 to job b.
		auto.State, auto.Size, auto.CompletedAt = CheckpointComplete, 1234, base
		if err := s.PutCheckpoint(ctx, auto); err != nil {
			t.Fatal(err)
		}
		if got, err := s.GetCheckpoint(ctx, auto.ID); err != nil || got.State != CheckpointComplete ||
			got.Size != 1234 || !got.CreatedAt.Equal(auto.CreatedAt) || got.Path != "/tmp/x.tar" {
			t.Fatalf("GetCheckpoint after replace = %+v, %v", got, err)
		}
		if err := s.PutCheckpoint(ctx, &Checkpoint{ID: "c1", JobID: b.ID, CreatedAt: base}); err != nil {
			t.Fatal(err)
		}
		if got := ids(a.ID); !slices.Equal(got, []string{"c3", "c2b", "c2a"}) {
			t.Fatalf("after move, a's checkpoints = %v", got)
		}
		if got := ids(b.ID); !slices.Equal(got, []string{auto.ID, "b1", "c1"}) {
			t.Fatalf("after move, b's checkpoints = %v", got)
		}

		if err := s.DeleteCheckpoint(ctx, "c3"); err != nil {
			t.Fatal(err)
		}
		wantErr(t, s.DeleteCheckpoint(ctx, "c3"), ErrNotFound)
		if got := ids(a.ID); !slices.Equal(got, []string{"c2b", "c2a"}) {
			t.Fatalf("after delete, a's checkpoints = %v", got)
		}
		for _, id := range []string{"c2a", "c2b"} {
			if err := s.DeleteCheckpoint(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		if got, err := s.ListCheckpoints(ctx, a.ID); err != nil || got == nil || len(got) != 0 {
			t.Fatalf("ListCheckpoints of job without checkpoints = %v, %v; want empty, non-nil", got, err)
		}
		wantErr(t, s.PutCheckpoint(ctx, &Checkpoint{JobID: "job-nope"}), ErrNotFound)
		wantErr(t, s.PutCheckpoint(ctx, &Checkpoint{ID: "x"}), ErrInvalid)
		wantErr(t, s.PutCheckpoint(ctx, nil), ErrInvalid)
	})
}

func TestEvents(t *testing.T) {
	forEachImpl(t, func(t *testing.T, s Store) {
		a, b := mustJob(t, s, "a"), mustJob(t, s, "b")
		when := time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)
		for i := range 10 {
			e, err := s.AddEvent(ctx, Event{JobID: a.ID, Seq: 999, Type: "checkpointed", Message: fmt.Sprint(i)})
			if err != nil || e.Seq != uint64(i+1) || e.Time.IsZero() {
				t.Fatalf("AddEvent #%d = %+v, %v; want seq %d and a time", i, e, err, i+1)
			}
		}
		if e, _ := s.AddEvent(ctx, Event{JobID: b.ID, Time: when, Type: "died"}); e.Seq != 1 || !e.Time.Equal(when) {
			t.Fatalf("first event of b = %+v; want seq 1 and the given time", e)
		}
		for _, tc := range []struct {
			after uint64
			limit int
			want  []uint64
		}{
			{0, 0, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
			{0, 3, []uint64{1, 2, 3}},
			{3, 3, []uint64{4, 5, 6}},
			{8, 5, []uint64{9, 10}},
			{9, -1, []uint64{10}},
			{10, 0, nil},
			{1 << 63, 0, nil},
			{^uint64(0), 0, nil},
		} {
			got, err := s.ListEvents(ctx, a.ID, tc.after, tc.limit)
			if err != nil || got == nil {
				t.Fatalf("ListEvents(after %d, limit %d) = %v, %v", tc.after, tc.limit, got, err)
			}
			var seqs []uint64
			for _, e := range got {
				if e.JobID != a.ID || e.Message != fmt.Sprint(e.Seq-1) {
					t.Fatalf("event %+v", e)
				}
				seqs = append(seqs, e.Seq)
			}
			if !slices.Equal(seqs, tc.want) {
				t.Errorf("ListEvents(after %d, limit %d) = %v, want %v", tc.after, tc.limit, seqs, tc.want)
			}
		}
		_, err := s.AddEvent(ctx, Event{JobID: "job-nope"})
		wantErr(t, err, ErrNotFound)
		_, err = s.AddEvent(ctx, Event{})
		wantErr(t, err, ErrInvalid)
	})
}

func TestNotFound(t *testing.T) {
	forEachImpl(t, func(t *testing.T, s Store) {
		mustJob(t, s, "a")
		nop := func(*Job) error { return nil }
		for _, tc := range []struct {
			name string
			call func() error
		}{
			{"GetJob", func() error { _, err := s.GetJob(ctx, "nope"); return err }},
			{"UpdateJob", func() error { _, err := s.UpdateJob(ctx, "nope", nop); return err }},
			{"DeleteJob", func() error { return s.DeleteJob(ctx, "nope") }},
			{"GetCheckpoint", func() error { _, err := s.GetCheckpoint(ctx, "nope"); return err }},
			{"DeleteCheckpoint", func() error { return s.DeleteCheckpoint(ctx, "nope") }},
			{"ListCheckpoints", func() error { _, err := s.ListCheckpoints(ctx, "nope"); return err }},
			{"PutCheckpoint", func() error { return s.PutCheckpoint(ctx, &Checkpoint{JobID: "nope"}) }},
			{"AddEvent", func() error { _, err := s.AddEvent(ctx, Event{JobID: "nope"}); return err }},
			{"ListEvents", func() error { _, err := s.ListEvents(ctx, "nope", 0, 0); return err }},
		} {
			t.Run(tc.name, func(t *testing.T) { wantErr(t, tc.call(), ErrNotFound) })
		}
	})
}

func TestCanceledAndClosed(t *testing.T) {
	forEachImpl(t, func(t *testing.T, s Store) {
		mustJob(t, s, "a")
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		_, err := s.GetJob(canceled, "a")
		wantErr(t, err, context.Canceled)

		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close = %v", err)
		}
		for _, tc := range []struct {
			name string
			call func() error
		}{
			{"GetJob", func() error { _, err := s.GetJob(ctx, "a"); return err }},
			{"ListJobs", func() error { _, err := s.ListJobs(ctx); return err }},
			{"CreateJob", func() error { return s.CreateJob(ctx, &Job{Name: "b"}) }},
		} {
			t.Run(tc.name, func(t *testing.T) { wantErr(t, tc.call(), ErrClosed) })
		}
	})
}

func TestNewID(t *testing.T) {
	const n = 10000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = NewID("job-")
	}
	if !slices.IsSorted(ids) {
		t.Fatal("IDs do not sort in creation order")
	}
	if len(slices.Compact(slices.Clone(ids))) != n {
		t.Fatal("duplicate IDs")
	}
	if id := ids[0]; len(id) != len("job-")+21 || id[:4] != "job-" {
		t.Fatalf("ID %q: want job- and 21 characters", id)
	}
}
