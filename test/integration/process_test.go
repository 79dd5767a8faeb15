package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestCounter: the basic promise. A shell loop's counter continues after
// dump and restore, from where it was, not from zero.
func TestCounter(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	ctr := filepath.Join(t.TempDir(), "counter")
	p := start(t, "bash", "-c", counterScript(ctr))
	eventually(t, 5*time.Second, "counter to reach 5", func() bool { return readCounter(ctr) >= 5 })

	path := e.dump(p.pid())
	p.waitExit(t, 5*time.Second) // killed once the archive is on disk

	if !regexp.MustCompile(`^bash_\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}Z(-\d+)?\.zip$`).MatchString(filepath.Base(path)) {
		t.Errorf("archive name %q is not <name>_<time>.zip", filepath.Base(path))
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("archive mode %v, want 0600", st.Mode().Perm())
	}
	if left, _ := filepath.Glob(filepath.Join(e.dir, ".*")); len(left) > 0 {
		t.Errorf("temporary files left in the dump dir: %v", left)
	}
	before := readCounter(ctr)
	time.Sleep(200 * time.Millisecond)
	if v := readCounter(ctr); v != before {
		t.Fatalf("counter moved from %d to %d after the dump: the process was not stopped", before, v)
	}

	e.restore(path)
	checkContinues(t, ctr, before)

	// The archive is intact after restore and describes the process.
	r := e.cedana("inspect", "--verify", "-o", "json", path)
	if r.code != 0 {
		t.Fatalf("inspect: %s", r)
	}
	var out struct {
		Manifest struct {
			RootPID   int `json:"root_pid"`
			Processes []struct {
				Name    string   `json:"name"`
				Cmdline []string `json:"cmdline"`
			} `json:"processes"`
			Entries []struct{ Name string } `json:"entries"`
		} `json:"manifest"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("inspect -o json: %v\n%s", err, r.stdout)
	}
	if out.Manifest.RootPID != p.pid() || out.Manifest.Processes[0].Name != "bash" {
		t.Errorf("manifest root %d %q, want %d bash", out.Manifest.RootPID, out.Manifest.Processes[0].Name, p.pid())
	}
	if len(out.Manifest.Entries) < 5 {
		t.Errorf("manifest lists only %d entries", len(out.Manifest.Entries))
	}
}

// TestTwoDumpsSameSecond: archive names never collide.
func TestTwoDumpsSameSecond(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	p := start(t, "sleep", "1000")
	a := e.dump(p.pid(), "--leave-running")
	b := e.dump(p.pid(), "--leave-running")
	if a == b {
		t.Fatalf("two dumps wrote the same archive %s", a)
	}
	if !p.running() {
		t.Fatal("--leave-running: the process was stopped")
	}
	for _, f := range []string{a, b} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("archive missing: %v", err)
		}
	}
}

// TestProcessTree: a parent and its children are dumped and restored
// together, and every child's state survives.
func TestProcessTree(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	dir := t.TempDir()
	c1, c2 := filepath.Join(dir, "c1"), filepath.Join(dir, "c2")
	script := "(" + counterScript(c1) + ") & (" + counterScript(c2) + ") & wait"
	p := start(t, "bash", "-c", script)
	eventually(t, 5*time.Second, "both counters to start", func() bool { return readCounter(c1) >= 3 && readCounter(c2) >= 3 })

	var out struct {
		Path      string `json:"path"`
		Processes int    `json:"processes"`
	}
	e.dumpJSON(p.pid(), &out)
	if out.Processes < 3 {
		t.Errorf("dumped %d processes, want the parent and at least 2 children", out.Processes)
	}
	p.waitExit(t, 5*time.Second)
	b1, b2 := readCounter(c1), readCounter(c2)
	e.restore(out.Path)
	checkContinues(t, c1, b1)
	checkContinues(t, c2, b2)
}

// TestFailedDumpLeavesProcessRunning: when CRIU refuses (here: an
// established TCP connection with --tcp-established=false), the process
// keeps running, no archive appears, and the error says what to do.
func TestFailedDumpLeavesProcessRunning(t *testing.T) {
	requireCRIU(t)
	py := requireBinary(t, "python3")
	e := newEnv(t)
	ln := listenTCP(t)
	p := start(t, py, "-c", `
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
while True:
    time.sleep(0.1)
`, itoa(ln.port))
	ln.accept(t, 5*time.Second)

	r := e.cedana("client", "dump", "-p", itoa(p.pid()), "-d", e.dir, "--tcp-established=false")
	if r.code == 0 {
		t.Fatalf("dump of a process with a TCP connection succeeded with --tcp-established=false: %s", r)
	}
	if !strings.Contains(r.stderr, "--tcp-established") {
		t.Errorf("error does not name the fix --tcp-established:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, "still running") {
		t.Errorf("error does not say the process is still running:\n%s", r.stderr)
	}
	if strings.Contains(r.stderr, "RLIMIT_NOFILE") {
		t.Errorf("error repeats the harmless RLIMIT_NOFILE line:\n%s", r.stderr)
	}
	time.Sleep(100 * time.Millisecond)
	if !p.running() {
		t.Fatal("the process died after a failed dump")
	}
	if files, _ := os.ReadDir(e.dir); len(files) > 0 {
		t.Errorf("a failed dump left files in the dump dir: %v", files)
	}
}

// TestRestoreWhileOriginalRuns: the PID is taken, so restore must refuse
// with a message that names the PID, not a CRIU error.
func TestRestoreWhileOriginalRuns(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	p := start(t, "sleep", "1000")
	path := e.dump(p.pid(), "--leave-running")
	r := e.cedana("client", "restore", path, "--pid-wait", "300ms")
	if r.code != 6 {
		t.Fatalf("restore with the PID taken: want exit 6, got %s", r)
	}
	if !strings.Contains(r.stderr, "PID "+itoa(p.pid())) {
		t.Errorf("error does not name the busy PID %d:\n%s", p.pid(), r.stderr)
	}
	if !p.running() {
		t.Error("the original process was harmed")
	}
}

// TestDefaultDirFromConfig: without -d the directory comes from
// ~/.cedana/cedana_config.json → shared_storage.dump_storage_dir.
func TestDefaultDirFromConfig(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	want := filepath.Join(t.TempDir(), "from-config")
	if err := os.MkdirAll(filepath.Join(e.home, ".cedana"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := `{"shared_storage": {"dump_storage_dir": "` + want + `"}}`
	if err := os.WriteFile(filepath.Join(e.home, ".cedana", "cedana_config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, "sleep", "1000")
	r := e.cedana("client", "dump", "-p", itoa(p.pid()), "--leave-running")
	if r.code != 0 {
		t.Fatalf("dump: %s", r)
	}
	if filepath.Dir(r.stdout) != want {
		t.Errorf("archive %s not in the configured dir %s", r.stdout, want)
	}
}
