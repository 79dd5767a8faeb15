package integration

// The compatibility suite: real programs people keep long jobs in, each
// dumped with the real cedana and restored, with its state checked
// (README "Known to work"). The programs are in testdata/compat.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// compatProgram returns the path of a program of testdata/compat.
func compatProgram(t *testing.T, name string) string {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(self), "testdata", "compat", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// startWithEnv is start with the environment env (added to, or replacing,
// cedana's own; a "NAME=" entry without a value removes NAME).
func startWithEnv(t *testing.T, env []string, argv ...string) *proc {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = mergeEnv(os.Environ(), env)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", argv, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	killTreeAtEnd(t, cmd.Process.Pid)
	return p
}

func mergeEnv(base, extra []string) []string {
	out := make([]string, 0, len(base)+len(extra))
	drop := map[string]bool{}
	for _, e := range extra {
		k, _, _ := strings.Cut(e, "=")
		drop[k] = true
	}
	for _, e := range base {
		if k, _, _ := strings.Cut(e, "="); !drop[k] {
			out = append(out, e)
		}
	}
	for _, e := range extra {
		if !strings.HasSuffix(e, "=") {
			out = append(out, e)
		}
	}
	return out
}

// dumpNoted dumps pid and returns the archive and what cedana noted on
// stderr (the options it chose, and why).
func (e *env) dumpNoted(pid int, extra ...string) (path, notes string) {
	e.t.Helper()
	r := e.cedana(append([]string{"client", "dump", "-p", strconv.Itoa(pid), "-d", e.dir}, extra...)...)
	if r.code != 0 {
		e.t.Fatalf("dump failed: %s", r)
	}
	return r.stdout, r.stderr
}

// TestCompatPython: a Python process with a dict of 100,000 entries built
// in memory answers over its (restored) listening unix socket with the
// same values after restore, and its counter continues.
func TestCompatPython(t *testing.T) {
	requireCRIU(t)
	py := requireBinary(t, "python3")
	e := newEnv(t)
	dir := t.TempDir()
	ctr, sock := filepath.Join(dir, "counter"), filepath.Join(dir, "store.sock")
	p := start(t, py, compatProgram(t, "store.py"), ctr, sock)
	eventually(t, 30*time.Second, "python to build its dict", func() bool { return readCounter(ctr) >= 3 })
	ask := func(key string) string {
		t.Helper()
		c, err := net.DialTimeout("unix", sock, 5*time.Second)
		if err != nil {
			t.Fatalf("connect to the python process: %v", err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET %s\n", key)
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("GET %s: %v", key, err)
		}
		return strings.TrimSpace(line)
	}
	want := ask("k4242")
	if len(want) != 64 {
		t.Fatalf("GET k4242 = %q, not a digest", want)
	}

	path, _ := e.dumpNoted(p.pid())
	p.waitExit(t, 5*time.Second)
	before := readCounter(ctr)
	e.restore(path)
	checkContinues(t, ctr, before)
	if got := ask("k4242"); got != want {
		t.Errorf("after restore GET k4242 = %q, want %q", got, want)
	}
	if got := ask(fmt.Sprintf("tick%d", before)); got != strconv.Itoa(before) {
		t.Errorf("after restore GET tick%d = %q: the entries added before the dump are gone", before, got)
	}
}

// TestCompatPerl: a Perl interpreter whose hash checks itself every tick
// (it exits if anything was lost) keeps counting after restore.
func TestCompatPerl(t *testing.T) {
	requireCRIU(t)
	perl := requireBinary(t, "perl")
	e := newEnv(t)
	ctr := filepath.Join(t.TempDir(), "counter")
	p := start(t, perl, compatProgram(t, "counter.pl"), ctr)
	eventually(t, 10*time.Second, "perl to count", func() bool { return readCounter(ctr) >= 3 })
	path, _ := e.dumpNoted(p.pid())
	p.waitExit(t, 5*time.Second)
	before := readCounter(ctr)
	e.restore(path)
	checkContinues(t, ctr, before)
}

// TestCompatJVM: a JVM (java running a single source file, so compiled in
// the same JVM at start) whose heap HashMap checks itself every tick keeps
// counting after restore, with default options: no --file-locks, no ghost
// files. The JVM maps /tmp/hsperfdata_USER/PID shared and writable without
// keeping it open; CRIU cannot restore that mapping when the file is gone
// (another machine, a cleaned /tmp), so the archive carries it. The test
// removes it between dump and restore.
func TestCompatJVM(t *testing.T) {
	requireCRIU(t)
	java := requireBinary(t, "java")
	e := newEnv(t)
	ctr := filepath.Join(t.TempDir(), "counter")
	src := compatProgram(t, "Counter.java")
	p := start(t, java, "-Xmx64m", "-XX:+UseSerialGC", src, ctr)
	perf := fmt.Sprintf("/tmp/hsperfdata_%s/%d", userName(), p.pid())
	t.Cleanup(func() { _ = os.Remove(perf) })
	eventually(t, 60*time.Second, "the JVM to start and count", func() bool { return readCounter(ctr) >= 3 })
	path, _ := e.dumpNoted(p.pid())
	p.waitExit(t, 10*time.Second)
	before := readCounter(ctr)
	if err := os.Remove(perf); err != nil {
		t.Fatalf("the JVM's perf data file: %v", err)
	}
	r := e.cedana("client", "restore", path)
	if r.code != 0 {
		t.Fatalf("restore without the JVM's perf data file: %s", r)
	}
	pid, _ := strconv.Atoi(r.stdout)
	killTreeAtEnd(t, pid)
	if !strings.Contains(r.stderr, "put back "+perf) {
		t.Errorf("the restore did not put back %s:\n%s", perf, r.stderr)
	}
	checkContinues(t, ctr, before)
}

func userName() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	if os.Geteuid() == 0 {
		return "root"
	}
	return strconv.Itoa(os.Geteuid())
}

// buildGoServer builds testdata/compat/httpserver with the Go toolchain
// that runs the tests.
func buildGoServer(t *testing.T) string {
	t.Helper()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = requireBinary(t, "go")
	}
	dir := t.TempDir()
	src, err := os.ReadFile(compatProgram(t, "httpserver/main.go"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module httpserver\n\ngo 1.24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "httpserver")
	cmd := exec.Command(goBin, "build", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = mergeEnv(os.Environ(), []string{"GOTOOLCHAIN=local", "GOWORK=off", "GOFLAGS=", "CGO_ENABLED=0"})
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the Go server: %v\n%s", err, out)
	}
	return bin
}

// httpGet fetches a URL on a fresh connection (no keep-alive, so that no
// TCP connection is open during a dump).
func httpGet(t *testing.T, url string) (string, error) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}

// TestCompatGoServer: a Go HTTP server (Go ≥ 1.24 listens with Multipath
// TCP by default, which CRIU cannot dump).
//   - without GODEBUG=multipathtcp=0 the dump is refused before CRIU
//     runs, with exit 3 and a message naming the PID, the socket and the
//     fix, and the server keeps serving;
//   - with it, the server is dumped and restored, and its counter and
//     map answer as before.
func TestCompatGoServer(t *testing.T) {
	requireCRIU(t)
	bin := buildGoServer(t)

	t.Run("MPTCPRefused", func(t *testing.T) {
		if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_MPTCP); err != nil {
			t.Skipf("skipping: this kernel has no MPTCP (or net.mptcp.enabled=0), so Go listens with plain TCP: %v", err)
		} else {
			unix.Close(fd)
		}
		e := newEnv(t)
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		p := startWithEnv(t, []string{"GODEBUG="}, bin, addr)
		eventually(t, 10*time.Second, "the server to answer", func() bool { _, err := httpGet(t, "http://"+addr+"/hit"); return err == nil })
		r := e.cedana("client", "dump", "-p", itoa(p.pid()), "-d", e.dir)
		if r.code != 3 {
			t.Fatalf("dump of an MPTCP listener: want exit 3 (refused before CRIU), got %s", r)
		}
		for _, want := range []string{fmt.Sprintf("PID %d", p.pid()), "Multipath TCP", "LISTEN " + addr, "GODEBUG=multipathtcp=0"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("the refusal does not say %q:\n%s", want, r.stderr)
			}
		}
		if !p.running() {
			t.Fatal("the server is gone after a refused dump")
		}
		if got, err := httpGet(t, "http://"+addr+"/hit"); err != nil || got != "2" {
			t.Fatalf("after the refused dump the server answers %q, %v; want 2", got, err)
		}
		if left, _ := filepath.Glob(filepath.Join(e.dir, "*")); len(left) > 0 {
			t.Errorf("a refused dump left files: %v", left)
		}
	})

	t.Run("GODEBUG", func(t *testing.T) {
		e := newEnv(t)
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		p := startWithEnv(t, []string{"GODEBUG=multipathtcp=0"}, bin, addr)
		eventually(t, 10*time.Second, "the server to answer", func() bool { _, err := httpGet(t, "http://"+addr+"/kv?k=a&v=alpha"); return err == nil })
		for i := 1; i <= 5; i++ {
			if got, err := httpGet(t, "http://"+addr+"/hit"); err != nil || got != strconv.Itoa(i) {
				t.Fatalf("hit %d: %q, %v", i, got, err)
			}
		}
		path, _ := e.dumpNoted(p.pid())
		p.waitExit(t, 5*time.Second)
		if _, err := httpGet(t, "http://"+addr+"/hit"); err == nil {
			t.Fatal("the server still answers after the dump")
		}
		e.restore(path)
		var got string
		eventually(t, 10*time.Second, "the restored server to answer", func() bool {
			var err error
			got, err = httpGet(t, "http://"+addr+"/hit")
			return err == nil
		})
		if got != "6" {
			t.Errorf("restored server: hit = %q, want 6 (its counter was lost)", got)
		}
		if v, err := httpGet(t, "http://"+addr+"/kv?k=a"); err != nil || v != "alpha" {
			t.Errorf("restored server: kv a = %q, %v; want alpha", v, err)
		}
	})
}

// TestCompatTmux: a tmux server with a counter in one window and an
// interactive shell in another. The panes' terminals are pseudo-terminals
// whose master the tmux server holds, inside the dumped tree: the dump is
// no shell job and the restore needs no terminal (cedana's stdin here is
// /dev/null). After restore the counter continues, and the server still
// takes commands on its socket: send-keys runs a command in the shell,
// capture-pane shows its output.
func TestCompatTmux(t *testing.T) {
	requireCRIU(t)
	tmux := requireBinary(t, "tmux")
	e := newEnv(t)
	dir := t.TempDir()
	sock, ctr := filepath.Join(dir, "tmux.sock"), filepath.Join(dir, "counter")
	tm := func(args ...string) (string, error) {
		cmd := exec.Command(tmux, append([]string{"-S", sock, "-f", "/dev/null"}, args...)...)
		cmd.Env = mergeEnv(os.Environ(), []string{"TMUX=", "TERM=xterm"})
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := tm("new-session", "-d", "-x", "100", "-y", "30", "-s", "job", "bash", "-c", counterScript(ctr)); err != nil {
		t.Fatalf("tmux new-session: %v\n%s", err, out)
	}
	out, err := tm("display-message", "-p", "#{pid}")
	if err != nil {
		t.Fatalf("tmux display-message: %v\n%s", err, out)
	}
	server, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("tmux server PID %q: %v", out, err)
	}
	killTreeAtEnd(t, server)
	if out, err := tm("new-window", "-d", "-t", "job", "bash", "--norc", "--noprofile", "-i"); err != nil {
		t.Fatalf("tmux new-window: %v\n%s", err, out)
	}
	eventually(t, 10*time.Second, "the counter in tmux", func() bool { return readCounter(ctr) >= 3 })

	path, notes := e.dumpNoted(server)
	if strings.Contains(notes, "shell-job:") {
		t.Errorf("the dump of a tmux server was taken as a shell job:\n%s", notes)
	}
	if !strings.Contains(notes, "inside the tree") {
		t.Errorf("the dump does not say the panes' terminals are inside the tree:\n%s", notes)
	}
	eventually(t, 5*time.Second, "the tmux server to stop", func() bool { return !alive(server) })
	before := readCounter(ctr)

	if pid := e.restore(path); pid != server {
		t.Errorf("restored as PID %d, want %d", pid, server)
	}
	checkContinues(t, ctr, before)
	marker := filepath.Join(dir, "marker")
	if out, err := tm("send-keys", "-t", "job:1", "echo restored-ok > "+marker+"; echo screen-$((6*7))", "Enter"); err != nil {
		t.Fatalf("tmux send-keys after restore: %v\n%s", err, out)
	}
	eventually(t, 10*time.Second, "the shell in the restored pane to run the command", func() bool {
		b, err := os.ReadFile(marker)
		return err == nil && strings.TrimSpace(string(b)) == "restored-ok"
	})
	eventually(t, 5*time.Second, "capture-pane to show the output", func() bool {
		out, err := tm("capture-pane", "-p", "-t", "job:1")
		return err == nil && strings.Contains(out, "screen-42")
	})
}

// TestCompatSQLitePool: a Python multiprocessing pool whose workers each
// hold a SQLite connection (WAL mode, so SQLite holds POSIX locks on the
// -shm file all the time). Cedana sees the locks and dumps with
// --file-locks by itself; after restore the rows continue, no batch is
// missing a row, and the database passes its integrity check.
func TestCompatSQLitePool(t *testing.T) {
	requireCRIU(t)
	py := requireBinary(t, "python3")
	e := newEnv(t)
	dir := t.TempDir()
	db, ctr := filepath.Join(dir, "rows.db"), filepath.Join(dir, "batches")
	p := start(t, py, compatProgram(t, "pool.py"), db, ctr)
	eventually(t, 30*time.Second, "the pool to write rows", func() bool { return readCounter(ctr) >= 3 })

	path, notes := e.dumpNoted(p.pid())
	if !strings.Contains(notes, "file-locks") {
		t.Errorf("the dump did not choose --file-locks for the SQLite locks:\n%s", notes)
	}
	p.waitExit(t, 10*time.Second)
	before := readCounter(ctr)
	e.restore(path)
	checkContinues(t, ctr, before)

	// Every row of every completed batch is there, once; the database is
	// consistent (read while the pool keeps writing: WAL readers are not
	// blocked).
	batches := readCounter(ctr)
	q := fmt.Sprintf(`import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=30)
print(c.execute("PRAGMA integrity_check").fetchone()[0])
print(c.execute("SELECT count(*), count(DISTINCT n), coalesce(sum(sq = n*n), 0) FROM rows WHERE n < ?", (%d * 6,)).fetchone())`, batches)
	out, err := exec.Command(py, "-c", q, db).CombinedOutput()
	if err != nil {
		t.Fatalf("query the database: %v\n%s", err, out)
	}
	n := batches * 6
	want := fmt.Sprintf("ok\n(%d, %d, %d)\n", n, n, n)
	if string(out) != want {
		t.Errorf("database after restore:\n%s\nwant:\n%s(integrity ok, %d rows of %d batches, each once, each right)", out, want, n, batches)
	}
}

// TestCompatLockedMappedFile: a process holds POSIX locks on a file it
// also maps shared, as SQLite in WAL mode does with its -shm file. CRIU
// restores the locks and then drops them when it maps the file (closing
// a descriptor of a locked file releases the process's POSIX locks on
// it); two restored SQLite writers then write at once and a committed row
// is lost. After restore the process must hold both locks again: another
// process cannot take either byte, and the counter continues.
func TestCompatLockedMappedFile(t *testing.T) {
	requireCRIU(t)
	py := requireBinary(t, "python3")
	e := newEnv(t)
	dir := t.TempDir()
	shm, ctr := filepath.Join(dir, "db-shm"), filepath.Join(dir, "counter")
	p := start(t, py, compatProgram(t, "maplock.py"), shm, ctr)
	eventually(t, 30*time.Second, "the program to count", func() bool { return readCounter(ctr) >= 3 })

	path, notes := e.dumpNoted(p.pid())
	if !strings.Contains(notes, "file-locks") {
		t.Errorf("the dump did not choose --file-locks:\n%s", notes)
	}
	p.waitExit(t, 10*time.Second)
	before := readCounter(ctr)

	// While another process (this test) holds a conflicting lock, the
	// restore is refused at once, naming it (CRIU would wait for it).
	hold, err := os.OpenFile(shm, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Start: 120, Len: 1}
	if err := syscall.FcntlFlock(hold.Fd(), syscall.F_SETLK, &lk); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := e.cedana("client", "restore", path)
	hold.Close() // releases the lock
	if r.code == 0 || !strings.Contains(r.stderr, fmt.Sprintf("PID %d holds a lock on %s", os.Getpid(), shm)) {
		t.Fatalf("restore while another process holds a conflicting lock: want a refusal naming PID %d, got %s", os.Getpid(), r)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the refusal took %s: it waited for the lock", took)
	}

	pid := e.restore(path)
	checkContinues(t, ctr, before)
	checkLocked(t, shm, pid)
}

// TestDaemonLockedMappedFileNamespace: the same through the daemon, for a
// job in its own PID namespace, where the restored processes have new
// host PIDs and are found by the PIDs they have inside it.
func TestDaemonLockedMappedFileNamespace(t *testing.T) {
	requireCRIU(t)
	py := requireBinary(t, "python3")
	d := startDaemon(t, daemonOpts{})
	dir := t.TempDir()
	shm, ctr := filepath.Join(dir, "db-shm"), filepath.Join(dir, "counter")
	d.ok("run", "--name", "locker", "--pid-namespace", "--", py, compatProgram(t, "maplock.py"), shm, ctr)
	eventually(t, 30*time.Second, "the program to count", func() bool { return readCounter(ctr) >= 3 })
	before := readCounter(ctr)
	d.dumpJob("locker")
	waitGone(t, d.job("locker").PID, 5*time.Second)
	j := d.restoreJob("locker")
	checkContinues(t, ctr, before)
	checkLocked(t, shm, j.PID)
}

// checkLocked asserts that bytes 120 and 128 of the file at path are
// locked by PID pid (maplock.py's locks), as another process sees them.
func checkLocked(t *testing.T, path string, pid int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, b := range []int64{120, 128} {
		lk := syscall.Flock_t{Type: syscall.F_WRLCK, Start: b, Len: 1}
		if err := syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk); err != nil {
			t.Fatal(err)
		}
		if lk.Type == syscall.F_UNLCK || int(lk.Pid) != pid {
			t.Errorf("byte %d of the mapped file is not locked by the restored PID %d after restore (F_GETLK: %+v): its lock was lost", b, pid, lk)
		}
	}
}

// TestCompatLockTakenDuringDump: a process takes its first file lock
// after cedana looked at the tree but before CRIU froze it (the pre-dump
// hook, which runs in between, makes it take the lock). The look saw no
// lock, so --file-locks was off and CRIU refuses; cedana dumps again
// with it, and says so, instead of failing the checkpoint.
func TestCompatLockTakenDuringDump(t *testing.T) {
	requireCRIU(t)
	py := requireBinary(t, "python3")
	e := newEnv(t)
	dir := t.TempDir()
	shm, ctr, trigger := filepath.Join(dir, "db-shm"), filepath.Join(dir, "counter"), filepath.Join(dir, "trigger")
	p := start(t, py, compatProgram(t, "maplock.py"), shm, ctr, trigger)
	eventually(t, 30*time.Second, "the program to count", func() bool { return readCounter(ctr) >= 3 })

	hook := fmt.Sprintf(`touch %[1]s; for i in $(seq 200); do [ -e %[1]s.locked ] && exit 0; sleep 0.05; done; exit 1`, trigger)
	r := e.cedanaWith([]string{"CEDANA_HOOKS_PRE_DUMP=" + hook}, "client", "dump", "-p", strconv.Itoa(p.pid()), "-d", e.dir)
	if r.code != 0 {
		t.Fatalf("dump of a tree that took a lock while being dumped: %s", r)
	}
	if !strings.Contains(r.stderr, "dumped again with --file-locks") {
		t.Errorf("the dump does not say it was taken again with --file-locks:\n%s", r.stderr)
	}
	p.waitExit(t, 10*time.Second)
	before := readCounter(ctr)
	pid := e.restore(r.stdout)
	checkContinues(t, ctr, before)
	checkLocked(t, shm, pid)
}

// TestCompatConnectionDuringDump: a TCP connection is established after
// cedana looked at the tree but before CRIU froze it (the pre-dump hook
// makes the process connect to itself). CRIU refuses for want of
// --tcp-established; cedana dumps again with it, and the connection
// still carries bytes after restore.
func TestCompatConnectionDuringDump(t *testing.T) {
	requireCRIU(t)
	py := requireBinary(t, "python3")
	e := newEnv(t)
	dir := t.TempDir()
	ctr, trigger := filepath.Join(dir, "counter"), filepath.Join(dir, "trigger")
	p := start(t, py, compatProgram(t, "tcpself.py"), ctr, trigger)
	eventually(t, 30*time.Second, "the program to count", func() bool { return readCounter(ctr) >= 3 })

	hook := fmt.Sprintf(`touch %[1]s; for i in $(seq 200); do [ -e %[1]s.connected ] && exit 0; sleep 0.05; done; exit 1`, trigger)
	r := e.cedanaWith([]string{"CEDANA_HOOKS_PRE_DUMP=" + hook}, "client", "dump", "-p", strconv.Itoa(p.pid()), "-d", e.dir)
	if r.code != 0 {
		t.Fatalf("dump of a tree that connected while being dumped: %s", r)
	}
	if !strings.Contains(r.stderr, "dumped again with --tcp-established") {
		t.Errorf("the dump does not say it was taken again with --tcp-established:\n%s", r.stderr)
	}
	p.waitExit(t, 10*time.Second)
	before := readCounter(ctr)
	e.restore(r.stdout)
	checkContinues(t, ctr, before) // counts only while the connection works
}

// TestCompatLockedTreeKeepsStopped: a tree whose restore waits for its
// POSIX locks to be checked is resumed afterwards, but a process of it
// that was stopped (SIGSTOP) when dumped stays stopped, as CRIU leaves it.
func TestCompatLockedTreeKeepsStopped(t *testing.T) {
	requireCRIU(t)
	py := requireBinary(t, "python3")
	e := newEnv(t)
	dir := t.TempDir()
	shm, ctr := filepath.Join(dir, "db-shm"), filepath.Join(dir, "counter")
	p := start(t, "bash", "-c", fmt.Sprintf("%s %s %s %s & sleep 100000 & wait", py, compatProgram(t, "maplock.py"), shm, ctr))
	eventually(t, 30*time.Second, "the program to count", func() bool { return readCounter(ctr) >= 3 })
	var sleeper int
	eventually(t, 10*time.Second, "the sleep child", func() bool {
		kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.pid(), p.pid()))
		for _, f := range strings.Fields(string(kids)) {
			pid, _ := strconv.Atoi(f)
			if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(cmd)) == "sleep" {
				sleeper = pid
			}
		}
		return sleeper > 0
	})
	if err := syscall.Kill(sleeper, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the sleep to stop", func() bool { return procState(sleeper) == 'T' })

	path, _ := e.dumpNoted(p.pid())
	p.waitExit(t, 10*time.Second)
	before := readCounter(ctr)
	e.restore(path)
	checkContinues(t, ctr, before)
	if s := procState(sleeper); s != 'T' {
		t.Errorf("the sleep, stopped when dumped, is in state %q after restore, want T (stopped)", s)
	}
}

// TestCompatLockRetakeFails: when a lock CRIU dropped cannot be taken
// again (injected: retake-lock, as if the process could not be traced),
// the restore fails saying so and the restored tree is killed, never left
// to run unprotected; the archive is unchanged and a later restore works.
func TestCompatLockRetakeFails(t *testing.T) {
	requireCRIU(t)
	py := requireBinary(t, "python3")
	bin := faultBinary(t)
	e := newEnv(t)
	dir := t.TempDir()
	shm, ctr := filepath.Join(dir, "db-shm"), filepath.Join(dir, "counter")
	p := start(t, py, compatProgram(t, "maplock.py"), shm, ctr)
	eventually(t, 30*time.Second, "the program to count", func() bool { return readCounter(ctr) >= 3 })
	old := p.pid()
	path, _ := e.dumpNoted(old)
	p.waitExit(t, 10*time.Second)
	before := readCounter(ctr)

	r := e.runBinary(bin, []string{"CEDANA_FAULT=retake-lock"}, "client", "restore", path)
	if r.code == 0 || !strings.Contains(r.stderr, "could not be taken again") || !strings.Contains(r.stderr, "the restored tree was killed") {
		t.Fatalf("restore with a lock that cannot be taken again: want a failure saying so, got %s", r)
	}
	killTreeAtEnd(t, old) // in case it survived, for the next test
	eventually(t, 10*time.Second, "the restored tree to be gone", func() bool { return !alive(old) })
	time.Sleep(300 * time.Millisecond)
	if n := readCounter(ctr); n != before {
		t.Errorf("the counter moved from %d to %d: the tree ran without its lock", before, n)
	}

	pid := e.restore(path)
	checkContinues(t, ctr, before)
	checkLocked(t, shm, pid)
}
