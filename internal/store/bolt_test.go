package store

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openBolt(t testing.TB, path string) *boltStore {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s.(*boltStore)
}

func TestBoltPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cedana.db")
	s := openBolt(t, path)
	j := mustJob(t, s, "a")
	if _, err := s.UpdateJob(ctx, j.ID, func(j *Job) error { j.Name = "b"; j.Restores = 2; return nil }); err != nil {
		t.Fatal(err)
	}
	c := &Checkpoint{JobID: j.ID, State: CheckpointComplete, Size: 42}
	if err := s.PutCheckpoint(ctx, c); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.AddEvent(ctx, Event{JobID: j.ID, Type: "started"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openBolt(t, path)
	got, err := s.GetJob(ctx, "b")
	if err != nil || got.ID != j.ID || got.Restores != 2 || got.CreatedAt != j.CreatedAt {
		t.Fatalf("after reopen, GetJob = %+v, %v", got, err)
	}
	if cps, err := s.ListCheckpoints(ctx, j.ID); err != nil || len(cps) != 1 || cps[0].Size != 42 {
		t.Fatalf("after reopen, ListCheckpoints = %v, %v", cps, err)
	}
	// Seq carries on where it was.
	if e, err := s.AddEvent(ctx, Event{JobID: j.ID, Type: "restored"}); err != nil || e.Seq != 4 {
		t.Fatalf("after reopen, AddEvent = %+v, %v; want seq 4", e, err)
	}
	if err := s.checkConsistency(); err != nil {
		t.Fatal(err)
	}
}

func TestBoltFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	path := filepath.Join(dir, "cedana.db")
	openBolt(t, path)
	for _, tc := range []struct {
		path string
		want os.FileMode
	}{
		{dir, 0o700 | os.ModeDir},
		{path, 0o600},
	} {
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		// The umask can only take bits away.
		if fi.Mode()&^tc.want != 0 {
			t.Errorf("%s has mode %v, want at most %v", tc.path, fi.Mode(), tc.want)
		}
	}
}

func TestBoltLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cedana.db")
	openBolt(t, path)

	start := time.Now()
	s, err := Open(path) // flock is per open file, so this blocks even in-process
	elapsed := time.Since(start)
	if err == nil {
		_ = s.Close()
		t.Fatal("second Open of a locked store succeeded")
	}
	if elapsed > 2*time.Second {
		t.Errorf("second Open took %v, want < 2s", elapsed)
	}
	var le *LockedError
	if !errors.Is(err, ErrLocked) || !errors.As(err, &le) {
		t.Fatalf("second Open = %v, want a *LockedError", err)
	}
	if want := fmt.Sprintf("locked by another cedana daemon (PID %d)", os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
}

func TestFindLockHolder(t *testing.T) {
	const locks = `1: POSIX  ADVISORY  WRITE 100 fd:01:393240 0 EOF
2: FLOCK  ADVISORY  WRITE 200 fd:01:393241 0 EOF
2: -> FLOCK  ADVISORY  WRITE 300 fd:01:393240 0 EOF
3: FLOCK  ADVISORY  WRITE 400 103:02:393240 0 EOF
4: FLOCK  ADVISORY  WRITE 500 fd:01:393240 0 EOF
5: FLOCK  ADVISORY  WRITE 600 103:103:393240 0 EOF
`
	for _, tc := range []struct {
		name     string
		dev, ino uint64
		want     int
	}{
		{"flock on the file", 0xfd01, 393240, 500},
		{"other inode", 0xfd01, 393241, 200},
		{"other device", 0x10302, 393240, 400},
		{"large major and minor", 0x103<<8 | 0x03 | 0x100<<12, 393240, 600},
		{"no lock", 0xfd01, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := findLockHolder(bufio.NewScanner(strings.NewReader(locks)), tc.dev, tc.ino)
			if got != tc.want {
				t.Errorf("findLockHolder(dev %#x, ino %d) = %d, want %d", tc.dev, tc.ino, got, tc.want)
			}
		})
	}
}

func TestBoltSchemaTooNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cedana.db")
	s := openBolt(t, path)
	mustJob(t, s, "a")
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte(strconv.Itoa(SchemaVersion+1)))
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path)
	var se *SchemaError
	if !errors.Is(err, ErrSchemaTooNew) || !errors.As(err, &se) || se.Version != SchemaVersion+1 {
		t.Fatalf("Open of a newer schema = %v, want a *SchemaError", err)
	}
	if !strings.Contains(err.Error(), "newer cedana") {
		t.Errorf("error %q does not say a newer cedana wrote the file", err)
	}
	// The refusal left the file alone and unlocked.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error {
		if v, _ := readSchemaVersion(tx); v != SchemaVersion+1 {
			return fmt.Errorf("schema version is now %d", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestBoltNotAStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cedana.db")
	if err := os.WriteFile(path, []byte(strings.Repeat("not a bolt file\n", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(path); err == nil || !strings.Contains(err.Error(), path) {
		if s != nil {
			_ = s.Close()
		}
		t.Fatalf("Open of a non-bolt file = %v, want an error naming the file", err)
	}
}

func TestMigrations(t *testing.T) {
	for i, m := range migrations {
		if m.version != i+1 || m.name == "" || m.migrate == nil {
			t.Errorf("migrations[%d] = {%d, %q}: want version %d, a name and a func", i, m.version, m.name, i+1)
		}
	}
	if last := migrations[len(migrations)-1].version; last != SchemaVersion {
		t.Errorf("last migration is version %d, SchemaVersion is %d", last, SchemaVersion)
	}
	// Migrating twice is a no-op, and a fresh store is consistent.
	path := filepath.Join(t.TempDir(), "cedana.db")
	s := openBolt(t, path)
	_ = s.Close()
	s = openBolt(t, path)
	if err := s.checkConsistency(); err != nil {
		t.Fatal(err)
	}
}
