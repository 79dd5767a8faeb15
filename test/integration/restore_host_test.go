package integration

// A restore changes the host (carried files, the directories on their way)
// only when nothing but CRIU can refuse it any more, and puts the host back
// as it was when CRIU fails.

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestFailedRestoreLeavesHostUnchanged: a process with a log open for
// writing (carried in the archive) in a directory that is gone at restore
// time, and its working directory gone too, so CRIU fails. The failed
// restore must not leave the log or its directory behind; once the working
// directory is back, the restore puts the log back and the counter
// continues.
func TestFailedRestoreLeavesHostUnchanged(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	base := t.TempDir()
	work, logs := filepath.Join(base, "work"), filepath.Join(base, "logs")
	for _, d := range []string{work, logs} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ctr := filepath.Join(t.TempDir(), "counter")
	logFile := filepath.Join(logs, "app.log")
	p := start(t, "bash", "-c", "cd "+work+" && exec 3>"+logFile+" && "+counterScript(ctr))
	eventually(t, 5*time.Second, "the counter to start", func() bool { return readCounter(ctr) >= 3 })
	archive := e.dump(p.pid())
	p.waitExit(t, 10*time.Second)
	before := readCounter(ctr)

	if err := os.RemoveAll(work); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(logs); err != nil {
		t.Fatal(err)
	}
	r := e.cedana("client", "restore", archive)
	if r.code == 0 {
		t.Fatalf("restore succeeded without the working directory: %s", r)
	}
	if _, err := os.Lstat(logs); err == nil {
		t.Fatalf("the failed restore left %s on the host: %s", logs, r)
	}
	if n := readCounter(ctr); n != before {
		t.Fatalf("the counter moved (%d → %d) after a failed restore", before, n)
	}

	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	e.restore(archive)
	checkContinues(t, ctr, before)
	if _, err := os.Stat(logFile); err != nil {
		t.Fatalf("the carried log was not put back: %v", err)
	}
}

// TestRestoreRefusesSymlinkedDirectory: a directory on the way to a
// carried file (logs/sub/app.log) is replaced by a symlink before the
// restore; the restore must not create anything through it.
func TestRestoreRefusesSymlinkedDirectory(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	base, elsewhere := t.TempDir(), t.TempDir()
	logs := filepath.Join(base, "logs")
	if err := os.MkdirAll(filepath.Join(logs, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctr := filepath.Join(t.TempDir(), "counter")
	p := start(t, "bash", "-c", "exec 3>"+filepath.Join(logs, "sub", "app.log")+" && "+counterScript(ctr))
	eventually(t, 5*time.Second, "the counter to start", func() bool { return readCounter(ctr) >= 3 })
	archive := e.dump(p.pid())
	p.waitExit(t, 10*time.Second)

	if err := os.RemoveAll(logs); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, logs); err != nil {
		t.Fatal(err)
	}
	r := e.cedana("client", "restore", archive)
	if r.code == 0 {
		t.Fatalf("restore wrote through a symlinked directory: %s", r)
	}
	if left, _ := os.ReadDir(elsewhere); len(left) != 0 {
		t.Fatalf("the restore wrote %v through the symlink", left)
	}
}
