package checkpoint

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestWorkDirPerOperation: operations started at the same instant on the
// same process get directories of their own, so CRIU's stats-dump of one
// dump is never read as another's.
func TestWorkDirPerOperation(t *testing.T) {
	s := NewService(Settings{LogDir: t.TempDir()}, nil)
	at := time.Now()
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Go(func() {
			dir, err := s.WorkDir("dump", "python3", at)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if seen[dir] {
				t.Errorf("two operations share %s", dir)
			}
			seen[dir] = true
		})
	}
	wg.Wait()
	if len(seen) != 8 {
		t.Fatalf("%d work directories for 8 operations", len(seen))
	}
}

// TestPruneWorkDirs: beyond KeepLogs (newest kept) and past MaxLogAge the
// work directories and old single log files go; recent ones and files
// that are not CRIU's stay.
func TestPruneWorkDirs(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name   string
		keep   int
		maxAge time.Duration
		want   []string
	}{
		{"by count", 3, 0, []string{"dump-a-0", "restore-b-1", "dump-recent", "jobs.txt"}},
		{"by age", 0, 50 * time.Hour, []string{"dump-a-0", "restore-b-1", "runc-checkpoint-c-2", "dump-x-3", "docker-y-4", "dump-recent", "jobs.txt"}},
		{"count and age", 4, 150 * time.Minute, []string{"dump-a-0", "restore-b-1", "dump-recent", "jobs.txt"}},
		{"keep all", 0, 0, []string{"dump-a-0", "restore-b-1", "runc-checkpoint-c-2", "dump-x-3", "docker-y-4", "dump-old.log", "dump-recent", "jobs.txt"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			// Entry i is i+1 hours old; dump-recent is new (an operation
			// may still use it: never pruned, but it counts).
			for i, name := range []string{"dump-a-0", "restore-b-1", "runc-checkpoint-c-2", "dump-x-3", "docker-y-4"} {
				p := filepath.Join(dir, name)
				if err := os.Mkdir(p, 0o700); err != nil {
					t.Fatal(err)
				}
				log := filepath.Join(p, "dump.log")
				os.WriteFile(log, []byte("log"), 0o600)
				age := now.Add(-time.Duration(i+1) * time.Hour)
				os.Chtimes(log, age, age)
				os.Chtimes(p, age, age)
			}
			old := filepath.Join(dir, "dump-old.log") // a log of an older version
			os.WriteFile(old, nil, 0o600)
			os.Chtimes(old, now.Add(-100*time.Hour), now.Add(-100*time.Hour))
			os.Mkdir(filepath.Join(dir, "dump-recent"), 0o700)
			os.WriteFile(filepath.Join(dir, "jobs.txt"), nil, 0o600)
			os.Chtimes(filepath.Join(dir, "jobs.txt"), now.Add(-200*time.Hour), now.Add(-200*time.Hour))

			s := NewService(Settings{LogDir: dir, KeepLogs: tc.keep, MaxLogAge: tc.maxAge}, nil)
			s.pruneWorkDirs(now)
			ents, _ := os.ReadDir(dir)
			got := map[string]bool{}
			for _, e := range ents {
				got[e.Name()] = true
			}
			for _, w := range tc.want {
				if !got[w] {
					t.Errorf("%s was pruned", w)
				}
				delete(got, w)
			}
			if len(got) > 0 {
				t.Errorf("not pruned: %v", fmt.Sprint(got))
			}
		})
	}
}
