package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Fault tests: a dump that fails at any step after CRIU froze the tree
// must leave it running. The failures are real where they can be (a full
// staging or destination filesystem: a 4 KiB tmpfs) and injected where
// they cannot (an image that does not reach the archive, a failing fsync
// or rename) by a cedana built with -tags faults, which reads
// CEDANA_FAULT (see internal/fault).

var (
	faultBinOnce sync.Once
	faultBinPath string
	faultBinErr  error
)

// faultBinary returns a cedana built with -tags faults ($CEDANA_FAULT_BIN
// if set), built once per run.
func faultBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CEDANA_FAULT_BIN"); p != "" {
		return p
	}
	faultBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cedana-faults-")
		if err != nil {
			faultBinErr = err
			return
		}
		faultBinPath = filepath.Join(dir, "cedana")
		_, self, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-tags", "faults", "-o", faultBinPath, "./cmd/cedana")
		cmd.Dir = filepath.Join(filepath.Dir(self), "..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			faultBinErr = fmt.Errorf("build cedana -tags faults: %v\n%s", err, out)
		}
	})
	if faultBinErr != nil {
		t.Fatal(faultBinErr)
	}
	return faultBinPath
}

// tinyTmpfs mounts a 4 KiB tmpfs for the test and returns its path.
func tinyTmpfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=4k,mode=0700"); err != nil {
		t.Fatalf("mount a 4 KiB tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// checkRunsOn asserts that pid is not stopped and that its memory
// counter at ctr keeps advancing.
func checkRunsOn(t *testing.T, pid int, ctr string) {
	t.Helper()
	if s := procState(pid); s == 'T' || s == 't' || s == 0 || s == 'Z' {
		t.Fatalf("after the failed dump PID %d is in state %c, not running", pid, s)
	}
	from, _ := readMemCounter(ctr)
	eventually(t, 5*time.Second, "the counter to advance after the failed dump", func() bool {
		n, _ := readMemCounter(ctr)
		return n >= from+3
	})
}

// noArchive asserts that dir holds no archive, finished or partial.
func noArchive(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".zip") || strings.Contains(e.Name(), ".partial-") {
			t.Errorf("a failed dump left %s in %s", e.Name(), dir)
		}
	}
}

// TestFailedDumpResumes: for staged (< 64 MiB) and streamed (≥ 64 MiB)
// dumps, every failure after CRIU froze the tree — full staging
// directory, full destination, an image of each kind that does not reach
// the archive, a failing fsync or rename of the archive, a failure right
// after CRIU — leaves the process running (not stopped), counting, and
// no archive behind; then a dump of the same process still succeeds and
// restores with its memory intact.
func TestFailedDumpResumes(t *testing.T) {
	requireCRIU(t)
	requireBinary(t, "python3")
	bin := faultBinary(t)
	faults := []struct {
		name     string
		step     string                        // CEDANA_FAULT
		args     func(full string) []string    // extra flags, given a full filesystem
		dir      func(full, dir string) string // where the archive goes
		streamed bool                          // only streamed dumps have this step
	}{
		{name: "staging dir full", args: func(full string) []string { return []string{"--staging-dir", full} }},
		{name: "destination full", dir: func(full, _ string) string { return full }},
		{name: "pages image lost", step: "sink-pages", streamed: true},
		{name: "other image lost", step: "sink-image", streamed: true},
		{name: "archive fsync fails", step: "archive-fsync"},
		{name: "archive rename fails", step: "archive-rename"},
		{name: "failure right after CRIU", step: "after-freeze"},
	}
	for _, size := range []struct {
		name string
		mib  int
	}{{"staged", 8}, {"streamed", 80}} {
		t.Run(size.name, func(t *testing.T) {
			e := newEnv(t)
			ctr := filepath.Join(t.TempDir(), "counter")
			p := start(t, "python3", "-c", memCounterScript(ctr, size.mib))
			eventually(t, 15*time.Second, "counter to reach 3", func() bool { n, _ := readMemCounter(ctr); return n >= 3 })
			for _, f := range faults {
				if f.streamed && size.mib < 64 {
					continue
				}
				t.Run(f.name, func(t *testing.T) {
					full := tinyTmpfs(t)
					dir := e.dir
					if f.dir != nil {
						dir = f.dir(full, dir)
					}
					args := []string{"client", "dump", "-p", itoa(p.pid()), "-d", dir}
					if f.args != nil {
						args = append(args, f.args(full)...)
					}
					r := e.runBinary(bin, []string{"CEDANA_FAULT=" + f.step}, args...)
					if r.code == 0 {
						t.Fatalf("the dump succeeded despite the fault: %s", r)
					}
					if !strings.Contains(r.stderr, "still running") {
						t.Errorf("the error does not say the process is still running:\n%s", r.stderr)
					}
					checkRunsOn(t, p.pid(), ctr)
					noArchive(t, dir)
				})
			}
			// The process went through every failure unharmed: a dump
			// still works and restores its memory.
			path := e.dump(p.pid())
			p.waitExit(t, 5*time.Second)
			before, digest := readMemCounter(ctr)
			pid := e.restore(path)
			_ = pid
			checkMemContinues(t, ctr, before, digest)
		})
	}
}

// TestRuncFailedDumpResumes: a runc container whose dump fails (a full
// staging dir or destination, a failing fsync or rename, a failure right
// after runc) goes on running and counting — restored in place when runc
// had stopped it; when that restore
// fails too, the error says so and where the images are kept, and they
// are there.
func TestRuncFailedDumpResumes(t *testing.T) {
	requireContainers(t, "runc", "nsenter", "ip")
	bin := faultBinary(t)
	rootfs := busyboxRootfs(t)
	ce := newCtrEnv(t)
	bundle := makeBundle(t, rootfs, "sh", "-c", counterCmd)
	if r := ce.run("run", "runc", "--runc-root", ce.runcRoot, "--bundle", bundle, "--id", "ctr"); r.code != 0 {
		t.Fatalf("run runc: %s", r)
	}
	before := waitCounter(t, countFile(ce.runcPID("ctr")), 3)
	dump := func(step, dir string, extra ...string) result {
		return ce.runBinary(bin, []string{"CEDANA_DAEMON_STATE_DIR=" + ce.state, "CEDANA_FAULT=" + step},
			append([]string{"dump", "runc", "--runc-root", ce.runcRoot, "--id", "ctr", "-d", dir}, extra...)...)
	}
	for _, f := range []struct{ name, step, full string }{
		{name: "staging dir full", full: "staging"},
		{name: "destination full", full: "destination"},
		{name: "archive fsync fails", step: "archive-fsync"},
		{name: "archive rename fails", step: "archive-rename"},
		{name: "failure right after runc", step: "after-freeze"},
	} {
		t.Run(f.name, func(t *testing.T) {
			dir := ce.dir
			var extra []string
			switch f.full {
			case "destination":
				dir = tinyTmpfs(t)
			case "staging":
				extra = []string{"--staging-dir", tinyTmpfs(t)}
			}
			r := dump(f.step, dir, extra...)
			if r.code == 0 {
				t.Fatalf("the dump succeeded despite the fault: %s", r)
			}
			if !strings.Contains(r.stderr, "runs again") && !strings.Contains(r.stderr, "still running") {
				t.Errorf("the error does not say the container runs:\n%s", r.stderr)
			}
			pid := ce.runcPID("ctr")
			if pid == 0 {
				t.Fatalf("the container is not running after the failed dump:\n%s", r.stderr)
			}
			before = waitCounter(t, countFile(pid), before+3)
			noArchive(t, dir)
		})
	}
	t.Run("restart fails too", func(t *testing.T) {
		r := dump("after-freeze,container-resume", ce.dir)
		if r.code == 0 {
			t.Fatalf("the dump succeeded despite the fault: %s", r)
		}
		m := regexp.MustCompile(`kept in (\S+):`).FindStringSubmatch(r.stderr)
		if m == nil || !strings.Contains(r.stderr, "STOPPED") {
			t.Fatalf("the error does not say loudly that the container is stopped and where its images are:\n%s", r.stderr)
		}
		t.Cleanup(func() { os.RemoveAll(filepath.Dir(m[1])) })
		if _, err := os.Stat(filepath.Join(m[1], "inventory.img")); err != nil {
			t.Fatalf("the kept images are not in %s: %v", m[1], err)
		}
	})
}

// TestDockerFailedDumpResumes: a Docker container whose dump fails after
// the engine checkpointed it is started again from that checkpoint and
// goes on counting; when that start is refused too, the images are kept.
func TestDockerFailedDumpResumes(t *testing.T) {
	requireContainers(t, "nsenter")
	lookDockerd(t)
	bin := faultBinary(t)
	d := startDocker(t)
	const image = "cedana-busybox:test"
	d.importBusybox(busyboxRootfs(t), image)
	ce := newCtrEnv(t)
	id := d.runContainer("cedana-fault", image, "sh", "-c", counterCmd)
	before := waitCounter(t, countFile(d.pid(id)), 3)
	dump := func(step string) result {
		return ce.runBinary(bin, []string{"CEDANA_DAEMON_STATE_DIR=" + ce.state, "CEDANA_FAULT=" + step},
			"dump", "docker", "--docker-host="+d.host(), id, "-d", ce.dir)
	}
	for _, step := range []string{"after-freeze", "archive-rename"} {
		t.Run(step, func(t *testing.T) {
			r := dump(step)
			if r.code == 0 {
				t.Fatalf("the dump succeeded despite the fault: %s", r)
			}
			if !strings.Contains(r.stderr, "runs again") {
				t.Fatalf("the error does not say the container runs again:\n%s", r.stderr)
			}
			before = waitCounter(t, countFile(d.pid(id)), before+3)
			noArchive(t, ce.dir)
		})
	}
	t.Run("restart fails too", func(t *testing.T) {
		r := dump("after-freeze,container-resume")
		m := regexp.MustCompile(`kept in (\S+):`).FindStringSubmatch(r.stderr)
		if r.code == 0 || m == nil || !strings.Contains(r.stderr, "STOPPED") {
			t.Fatalf("the error does not say loudly that the container is stopped and where its images are:\n%s", r)
		}
		t.Cleanup(func() { os.RemoveAll(filepath.Dir(m[1])) })
		if _, err := os.Stat(filepath.Join(m[1], "inventory.img")); err != nil {
			t.Fatalf("the kept images are not in %s: %v", m[1], err)
		}
	})
}

// TestDaemonFailedDumpResumes: through the daemon too, a job whose dump
// fails after CRIU froze it (a failing fsync, a lost image of a streamed
// dump) keeps running and counting.
func TestDaemonFailedDumpResumes(t *testing.T) {
	requireBinary(t, "python3")
	for _, step := range []string{"archive-fsync", "sink-image"} {
		t.Run(step, func(t *testing.T) {
			d := startDaemon(t, daemonOpts{Binary: faultBinary(t), Env: []string{"CEDANA_FAULT=" + step}})
			ctr := filepath.Join(t.TempDir(), "counter")
			j := d.runJob("mem", nil, "python3", "-c", memCounterScript(ctr, 80))
			eventually(t, 30*time.Second, "counter to reach 3", func() bool { n, _ := readMemCounter(ctr); return n >= 3 })
			r := d.cli("dump", "job", "mem")
			if r.code == 0 {
				t.Fatalf("dump job succeeded despite the fault: %s", r)
			}
			if !strings.Contains(r.stderr, "still running") {
				t.Errorf("the error does not say the process is still running:\n%s", r.stderr)
			}
			checkRunsOn(t, j.PID, ctr)
		})
	}
}
