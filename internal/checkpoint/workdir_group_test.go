package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestGroupWorkDir: a group's operations rotate through keep slot
// directories, least recently used first; a failed one is renamed away
// (with a marker) and its slot made again.
func TestGroupWorkDir(t *testing.T) {
	dir := t.TempDir()
	s := NewService(Settings{LogDir: dir}, nil)
	var used []string
	for range 5 {
		w, err := s.GroupWorkDir("dump", "periodic-j1", 3)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(w, "dump.log"), []byte("log"), 0o600); err != nil {
			t.Fatal(err)
		}
		used = append(used, filepath.Base(w))
		time.Sleep(20 * time.Millisecond) // distinct modification times
	}
	want := []string{"dump-periodic-j1-slot0", "dump-periodic-j1-slot1", "dump-periodic-j1-slot2", "dump-periodic-j1-slot0", "dump-periodic-j1-slot1"}
	if !slices.Equal(used, want) {
		t.Errorf("slots used %v, want %v", used, want)
	}
	w, err := s.GroupWorkDir("dump", "periodic-j1", 3)
	if err != nil {
		t.Fatal(err)
	}
	kept := s.KeepFailedWorkDir(w, errors.New("boom"))
	if !strings.HasPrefix(filepath.Base(kept), "dump-periodic-j1-slot2-failed-") {
		t.Errorf("failed work dir kept as %s", kept)
	}
	if b, err := os.ReadFile(filepath.Join(kept, "dump.log")); err != nil || string(b) != "log" {
		t.Errorf("the failed operation's log was not kept: %q, %v", b, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 3 {
		t.Errorf("%d entries, want 2 slots and the failed one", len(ents))
	}
	if w2, _ := s.GroupWorkDir("dump", "periodic-j1", 3); filepath.Base(w2) != "dump-periodic-j1-slot2" {
		t.Errorf("the failed slot was not made again: %s", w2)
	}
}

// TestPruneRateLimited: the whole log directory is pruned at most once per
// pruneEvery, however many work directories are made.
func TestPruneRateLimited(t *testing.T) {
	s := NewService(Settings{LogDir: t.TempDir()}, nil)
	now := time.Now()
	if !s.pruneDue(now) {
		t.Fatal("first prune not due")
	}
	if s.pruneDue(now.Add(time.Second)) {
		t.Error("prune due again after a second")
	}
	if !s.pruneDue(now.Add(pruneEvery + time.Second)) {
		t.Error("prune not due after pruneEvery")
	}
}
