package integration

// Tests of the daemon's crash windows: the daemon kills itself with
// SIGKILL at a named step (CEDANA_FAULT in a -tags faults binary), a new daemon
// starts on the same state dir, and afterwards exactly one copy of the job
// runs and its counter continues — or the job is honestly failed with its
// archive listed. Copies are counted by a marker in the job's command line.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// markedCounter starts a counter job whose command line carries a marker
// unique to the test, and waits until it counts.
func markedCounter(t *testing.T, d *testDaemon, name string, flags ...string) (jobInfo, string, string) {
	t.Helper()
	ctr := filepath.Join(t.TempDir(), "counter")
	marker := fmt.Sprintf("cedana-test-marker-%d-%s", time.Now().UnixNano(), name)
	j := d.runJob(name, flags, "bash", "-c", loudCounterScript(ctr)+" # "+marker)
	eventually(t, 5*time.Second, "the counter to start", func() bool { return readCounter(ctr) >= 3 })
	return j, ctr, marker
}

// crashAt restarts the daemon so that it dies at point, runs the cedana
// command args (which the crash interrupts), waits for the daemon's death
// and starts a daemon without the crash point on the same state.
func crashAt(t *testing.T, d *testDaemon, point string, args ...string) {
	t.Helper()
	d.setCrashpoint(point)
	d.restartDaemon()
	r := d.cli(args...)
	if r.code == 0 {
		t.Fatalf("cedana %v succeeded; the daemon should have died at %s: %s", args, point, r)
	}
	d.waitExit(20 * time.Second)
	d.setCrashpoint("")
	d.launch()
	d.waitReady()
	t.Logf("daemon died at %s during `cedana %v`, restarted", point, args)
}

// exactlyOne asserts one copy of the job runs, as the job's PID, inside
// the job's cgroup (where there are cgroups).
func exactlyOne(t *testing.T, d *testDaemon, j jobInfo, marker string) jobInfo {
	t.Helper()
	got := d.job(j.Name)
	cs := copies(marker)
	if len(cs) != 1 || cs[0] != got.PID {
		t.Fatalf("copies of the job running: %v; want exactly one, the job's PID %d (job %s)", cs, got.PID, got.State)
	}
	if dir := jobCgroupDir(j.ID); dir != "" {
		if procs := cgroupProcs(j.ID); !slices.Contains(procs, got.PID) {
			t.Errorf("the job's PID %d is not in its cgroup %s (%v)", got.PID, dir, procs)
		}
	}
	return got
}

// TestDaemonCrashAfterKillBeforeCommit: the dump killed the tree and the
// daemon died before recording the checkpoint. The archive's path was
// recorded first, so the checkpoint is complete and the job restorable —
// also after its cgroup was removed, as on another node.
func TestDaemonCrashAfterKillBeforeCommit(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	j, ctr, marker := markedCounter(t, d, "ck")
	crashAt(t, d, "after-kill-before-commit", "dump", "job", "ck")
	waitGone(t, j.PID, 5*time.Second)

	got := d.job("ck")
	cs := complete(d.checkpoints("ck"))
	if got.State != "checkpointed" || len(cs) != 1 {
		t.Fatalf("after the restart the job is %s with %d complete checkpoint(s); want checkpointed with 1 (%+v)", got.State, len(cs), d.checkpoints("ck"))
	}
	if _, err := os.Stat(cs[0].Path); err != nil {
		t.Fatalf("the listed archive is missing: %v", err)
	}
	if n := copies(marker); len(n) != 0 {
		t.Fatalf("the dumped job still runs: %v", n)
	}
	if dir := jobCgroupDir(j.ID); dir != "" {
		if err := os.Remove(dir); err != nil && !os.IsNotExist(err) {
			t.Fatalf("remove the job's cgroup: %v", err)
		}
	}
	before := readCounter(ctr)
	d.restoreJob("ck")
	checkContinues(t, ctr, before)
	exactlyOne(t, d, j, marker)
}

// TestDaemonCrashDuringRestore: the daemon dies before CRIU starts (no
// copy runs: the job is failed with its archive listed, and restores
// later) or after CRIU restored the tree but before its PID was recorded
// (the next daemon finds the tree and adopts it; restore-on-failure must
// not start a second copy).
func TestDaemonCrashDuringRestore(t *testing.T) {
	cases := []struct {
		point string
		flags []string
	}{
		{"restore-before-engine", nil},
		{"restore-after-engine", []string{"--restore-on-failure"}},
	}
	for _, tc := range cases {
		t.Run(tc.point, func(t *testing.T) {
			d := startDaemon(t, daemonOpts{})
			j, ctr, marker := markedCounter(t, d, "r", tc.flags...)
			d.dumpJob("r")
			waitGone(t, j.PID, 5*time.Second)
			before := readCounter(ctr)
			crashAt(t, d, tc.point, "restore", "job", "r")

			got := d.job("r")
			if tc.point == "restore-before-engine" {
				cs := complete(d.checkpoints("r"))
				if got.State != "failed" || len(cs) != 1 || len(copies(marker)) != 0 {
					t.Fatalf("job %s, %d complete checkpoints, copies %v; want failed, 1, none", got.State, len(cs), copies(marker))
				}
				if _, err := os.Stat(cs[0].Path); err != nil {
					t.Fatalf("the listed archive is missing: %v", err)
				}
				d.restoreJob("r")
			} else {
				if got.State != "running" {
					t.Fatalf("after the restart the job is %s (%s); want running (the restored tree re-adopted)", got.State, got.Error)
				}
				d.track(got.PID)
				time.Sleep(1500 * time.Millisecond) // past the automatic restore's backoff
			}
			checkContinues(t, ctr, before)
			got = exactlyOne(t, d, j, marker)
			if got.Restores > 1 {
				t.Errorf("restores = %d", got.Restores)
			}
		})
	}
}

// TestDaemonCrashDuringAutoRestoreBackoff: the job failed and waited for
// its automatic restore when the daemon died; the next daemon restores it,
// once.
func TestDaemonCrashDuringAutoRestoreBackoff(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	j, ctr, marker := markedCounter(t, d, "phoenix", "--restore-on-failure")
	floor := readCounter(ctr) // the checkpoint holds at least this
	d.dumpJob("phoenix", "--leave-running")
	d.setCrashpoint("auto-restore-backoff")
	d.restartDaemon()
	if err := syscall.Kill(j.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.waitExit(10 * time.Second)
	d.setCrashpoint("")
	d.launch()
	d.waitReady()
	got := d.waitJob("phoenix", 15*time.Second, "restored by the next daemon", func(j jobInfo) bool { return j.State == "running" })
	d.track(got.PID)
	if got.Restores != 1 {
		t.Errorf("restores = %d, want 1", got.Restores)
	}
	checkContinues(t, ctr, floor)
	exactlyOne(t, d, j, marker)
}

// TestDaemonKillDuringBackoff: `cedana kill` while an automatic restore
// waits cancels it.
func TestDaemonKillDuringBackoff(t *testing.T) {
	d := startDaemon(t, daemonOpts{Daemon: map[string]any{"restore_backoff": "2s"}})
	j, _, marker := markedCounter(t, d, "k", "--restore-on-failure")
	d.dumpJob("k", "--leave-running")
	if err := syscall.Kill(j.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.waitJob("k", 5*time.Second, "failed", func(j jobInfo) bool { return j.State == "failed" })
	d.ok("kill", "k")
	time.Sleep(3 * time.Second)
	got := d.job("k")
	if got.State != "killed" || len(copies(marker)) != 0 || hasEvent(d.events("k"), "auto-restored") {
		t.Fatalf("after kill during the backoff: job %s, copies %v; want killed and none", got.State, copies(marker))
	}
}

// TestDaemonRestoreShellWithLiveChild: the job's shell is killed while
// its child (sleep) lives on in the job's session. The automatic restore
// ends the child first — otherwise it holds the session ID and every
// restore fails with "PID still in use" — and the job runs again, once.
func TestDaemonRestoreShellWithLiveChild(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	ctr := filepath.Join(t.TempDir(), "counter")
	marker := fmt.Sprintf("cedana-test-marker-%d-shell", time.Now().UnixNano())
	j := d.runJob("shell", []string{"--restore-on-failure"}, "bash", "-c",
		"sleep 3600 & "+loudCounterScript(ctr)+" # "+marker)
	eventually(t, 5*time.Second, "the counter to start", func() bool { return readCounter(ctr) >= 3 })
	var child int
	for _, p := range descendants(j.PID) {
		if c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p)); string(c) == "sleep\x003600\x00" {
			child = p
		}
	}
	if child == 0 {
		t.Fatal("no sleep 3600 child")
	}
	childStart := startTime(child)
	t.Cleanup(func() {
		if startTime(child) == childStart {
			_ = syscall.Kill(child, syscall.SIGKILL)
		}
	})
	floor := readCounter(ctr)
	d.dumpJob("shell", "--leave-running")
	if err := syscall.Kill(j.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	got := d.waitJob("shell", 15*time.Second, "restored", func(j jobInfo) bool { return j.State == "running" && j.Restores == 1 })
	d.track(got.PID)
	if startTime(child) == childStart {
		t.Errorf("the old child %d still runs beside the restored tree", child)
	}
	checkContinues(t, ctr, floor)
	exactlyOne(t, d, j, marker)
}

// TestDaemonCrashBeforeDump: the daemon recorded the pending checkpoint
// and died before the engine started: the checkpoint is failed (no
// archive), the job runs on, re-adopted, once.
func TestDaemonCrashBeforeDump(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	j, ctr, marker := markedCounter(t, d, "pre")
	crashAt(t, d, "dump-before-engine", "dump", "job", "pre")
	got := d.job("pre")
	if got.State != "running" || got.PID != j.PID {
		t.Fatalf("after the restart the job is %s as PID %d; want running as %d", got.State, got.PID, j.PID)
	}
	for _, c := range d.checkpoints("pre") {
		if c.State != "failed" {
			t.Errorf("checkpoint %s is %s; want failed (it never started)", c.ID, c.State)
		}
	}
	checkNotFrozen(t, j.PID, ctr)
	exactlyOne(t, d, j, marker)
}

// bigCounterScript holds ~150 MiB of random bytes (so that a restore
// takes a while) and writes an increasing counter to argv[1]; argv[2] is
// a marker.
const bigCounterScript = `
import os, sys, time
b = bytearray(os.urandom(150 << 20))
n = 0
while True:
    n += 1
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(0.05)
`

// TestDaemonKilledWhileCRIURestores: kill -9 of the daemon while CRIU
// (its child) restores a job, without a crash point: whatever CRIU then
// does, afterwards exactly one copy runs and continues, or the job is
// failed with its archive listed and a restore brings it back once.
func TestDaemonKilledWhileCRIURestores(t *testing.T) {
	py := requireBinary(t, "python3")
	d := startDaemon(t, daemonOpts{})
	ctr := filepath.Join(t.TempDir(), "counter")
	marker := fmt.Sprintf("cedana-test-marker-%d-criu", time.Now().UnixNano())
	j := d.runJob("mem", nil, py, "-c", bigCounterScript, ctr, marker)
	eventually(t, 60*time.Second, "the job to fill its memory", func() bool { return readCounter(ctr) >= 1 })
	before := readCounter(ctr)
	d.dumpJob("mem")
	waitGone(t, j.PID, 5*time.Second)

	bg := make(chan result, 1)
	go func() { bg <- d.cli("restore", "job", "mem") }()
	daemon := d.pid()
	sawCRIU := false
	for deadline := time.Now().Add(30 * time.Second); !sawCRIU && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		for _, p := range descendants(daemon) {
			// `criu swrk` (RPC) or `criu restore --stream` (streamed)
			if c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p)); bytes.Contains(c, []byte("criu")) &&
				(bytes.Contains(c, []byte("swrk")) || bytes.Contains(c, []byte("restore\x00"))) {
				sawCRIU = true
			}
		}
	}
	d.crash()
	t.Logf("daemon killed (CRIU was running: %v)", sawCRIU)
	d.launch()
	d.waitReady()
	<-bg
	got := d.waitJob("mem", 20*time.Second, "settled", func(j jobInfo) bool { return j.State != "restoring" })
	t.Logf("after the restart the job is %s (%s)", got.State, got.Error)
	switch got.State {
	case "running":
		d.track(got.PID)
	case "failed", "checkpointed":
		cs := complete(d.checkpoints("mem"))
		if len(cs) == 0 {
			t.Fatalf("the job is %s with no complete checkpoint listed", got.State)
		}
		if n := copies(marker); len(n) != 0 {
			t.Fatalf("the job is %s but %d copies run: %v", got.State, len(n), n)
		}
		d.restoreJob("mem")
	default:
		t.Fatalf("after the restart the job is %s", got.State)
	}
	checkContinues(t, ctr, before)
	exactlyOne(t, d, j, marker)
}
