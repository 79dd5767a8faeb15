package integration

// Tests of the daemon through the real binary: jobs are real processes,
// checkpoints are made by real CRIU, and every test checks state (a
// counter that continues) rather than exit codes alone. The harness is in
// daemon_harness_test.go.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestDaemonDumpRestore: run → ps → dump job → restore job. The counter
// continues from where it stopped, and the job's log holds its output from
// before and after the restore.
func TestDaemonDumpRestore(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	ctr := filepath.Join(t.TempDir(), "counter")
	j := d.runJob("ctr", nil, "bash", "-c", loudCounterScript(ctr))
	eventually(t, 5*time.Second, "counter to reach 5", func() bool { return readCounter(ctr) >= 5 })

	ps := d.job("ctr")
	if ps.ID == "" || ps.Name != "ctr" || ps.State != "running" || ps.PID != j.PID {
		t.Fatalf("ps -o json: got %+v, want id, name ctr, state running, pid %d", ps, j.PID)
	}

	ck := d.dumpJob("ctr")
	if ck.State != "complete" || ck.Path == "" {
		t.Fatalf("dump job returned %+v", ck)
	}
	if _, err := os.Stat(ck.Path); err != nil {
		t.Fatalf("archive missing: %v", err)
	}
	if got := d.job("ctr"); got.State != "checkpointed" || got.LastCheckpointID != ck.ID {
		t.Fatalf("after dump job: %+v, want checkpointed with last checkpoint %s", got, ck.ID)
	}
	waitGone(t, j.PID, 5*time.Second)
	before := readCounter(ctr)
	time.Sleep(200 * time.Millisecond)
	if v := readCounter(ctr); v != before {
		t.Fatalf("counter moved from %d to %d after the dump: the job was not stopped", before, v)
	}

	r := d.restoreJob("ctr")
	if r.State != "running" || r.PID <= 0 {
		t.Fatalf("restore job returned %+v", r)
	}
	checkContinues(t, ctr, before)

	logs := d.ok("logs", "ctr").stdout
	if !strings.Contains(logs, "tick 0\n") {
		t.Errorf("logs lack the output from before the dump (tick 0):\n%s", tail(logs, 300))
	}
	after := readCounter(ctr)
	if !strings.Contains(logs, fmt.Sprintf("tick %d\n", before)) || !regexp.MustCompile(fmt.Sprintf(`(?m)^tick %d$`, after-1)).MatchString(logs) {
		t.Errorf("logs lack the output from after the restore (tick %d … tick %d):\n%s", before, after-1, tail(logs, 300))
	}
}

// TestDaemonPeriodicRetention: --checkpoint-every 1s --keep 2 keeps at
// most two complete checkpoints at any time, and pruned archives are
// removed from disk.
func TestDaemonPeriodicRetention(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	j := d.runJob("periodic", []string{"--checkpoint-every", "1s", "--keep", "2", "--skip-unchanged", "never"}, "sleep", "100000")

	seen := map[string]bool{} // every complete archive ever listed
	deadline := time.Now().Add(4500 * time.Millisecond)
	for time.Now().Before(deadline) {
		cs := complete(d.checkpoints("periodic"))
		if len(cs) > 2 {
			t.Fatalf("%d complete checkpoints listed with --keep 2: %+v", len(cs), cs)
		}
		for _, c := range cs {
			seen[c.Path] = true
		}
		time.Sleep(150 * time.Millisecond)
	}
	// Stop the periodic checkpoints (kill waits for one in progress), so
	// that what is listed and what is on disk can be compared.
	d.ok("kill", "periodic")
	// A dump that ended just before the kill may still be applying the
	// retention policy (it runs after the job is back to running).
	time.Sleep(200 * time.Millisecond)
	cs := complete(d.checkpoints("periodic"))
	if len(cs) != 2 {
		t.Fatalf("after ~4 s of 1 s checkpoints with --keep 2: %d complete checkpoints, want 2: %+v", len(cs), cs)
	}
	listed := map[string]bool{}
	for _, c := range cs {
		listed[c.Path] = true
		seen[c.Path] = true
		if _, err := os.Stat(c.Path); err != nil {
			t.Errorf("a listed checkpoint's archive is missing: %v", err)
		}
	}
	if len(seen) < 3 {
		t.Errorf("only %d distinct checkpoints in ~4 s at 1 s intervals: nothing was pruned", len(seen))
	}
	for p := range seen {
		if listed[p] {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			t.Errorf("pruned archive still on disk: %s", p)
		}
	}
	onDisk, _ := filepath.Glob(filepath.Join(d.ckptDir, j.ID, "*"))
	if len(onDisk) != 2 {
		t.Errorf("%d files in the job's checkpoint dir, want the 2 kept archives: %v", len(onDisk), onDisk)
	}
	prunedNoted := false
	for _, e := range d.events("periodic") {
		if e.Type == "checkpointed" && strings.Contains(e.Message, "(retention policy)") {
			prunedNoted = true
		}
	}
	if !prunedNoted {
		t.Error("no checkpoint event records the checkpoints retention removed")
	}
}

// TestDaemonRestoreOnFailure: a job killed from outside is restored from
// its latest checkpoint, with its state: the counter goes on from at least
// its value at that checkpoint.
func TestDaemonRestoreOnFailure(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	ctr := filepath.Join(t.TempDir(), "counter")
	j := d.runJob("phoenix", []string{"--checkpoint-every", "1s", "--restore-on-failure"}, "bash", "-c", loudCounterScript(ctr))
	eventually(t, 5*time.Second, "counter to reach 5", func() bool { return readCounter(ctr) >= 5 })

	// A checkpoint completed after this read holds a counter ≥ floor.
	floor := readCounter(ctr)
	old := map[string]bool{}
	for _, c := range d.checkpoints("phoenix") {
		old[c.ID] = true
	}
	eventually(t, 5*time.Second, "a periodic checkpoint", func() bool {
		for _, c := range complete(d.checkpoints("phoenix")) {
			if !old[c.ID] {
				return true
			}
		}
		return false
	})
	if err := syscall.Kill(j.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	got := d.waitJob("phoenix", 10*time.Second, "running again after a restore", func(j jobInfo) bool {
		return j.State == "running" && j.Restores >= 1
	})
	if got.Restores != 1 {
		t.Errorf("restores = %d, want 1", got.Restores)
	}
	if !alive(got.PID) {
		t.Fatalf("job is running as PID %d, which does not exist", got.PID)
	}
	checkContinues(t, ctr, floor)

	es := d.events("phoenix")
	if !hasEvent(es, "died") || !hasEvent(es, "auto-restored") {
		t.Errorf("events lack died and auto-restored: %+v", es)
	}
}

// memJobScript holds ~300 MiB of random bytes (so that a dump takes a
// while) and writes an increasing counter to argv[1].
const memJobScript = `
import os, sys, time
b = bytearray(os.urandom(300 << 20))
n = 0
while True:
    n += 1
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(0.05)
`

// TestDaemonCrashDuringDump: the daemon is killed with SIGKILL while it
// dumps a large job, and started again. Afterwards no checkpoint is
// pending, every complete one has its archive, no half-written file
// remains, the job's process is not left frozen, and the job can be
// operated on. The oracle is strict: either the process runs on, or a
// complete checkpoint brings it back with its counter — a job whose
// process is gone without a checkpoint fails the test — and exactly one
// copy runs at the end.
// halfWritten lists the temporary files of checkpoints being written in a
// job's checkpoint directory: a plain archive's ".NAME.partial-*", a
// deduplicated checkpoint's or chunk's ".cedana-tmp-*".
func halfWritten(ckptDir, jobID string) []string {
	dir := filepath.Join(ckptDir, jobID)
	var out []string
	for _, pat := range []string{".*.partial-*", ".cedana-tmp-*", "chunks/sha256/*/.cedana-tmp-*"} {
		m, _ := filepath.Glob(filepath.Join(dir, pat))
		out = append(out, m...)
	}
	return out
}

func TestDaemonCrashDuringDump(t *testing.T) {
	py := requireBinary(t, "python3")
	cases := []struct {
		name string
		// when returns once the daemon should be killed.
		when func(d *testDaemon, jobID string)
	}{
		{"during CRIU", func(*testDaemon, string) { time.Sleep(150 * time.Millisecond) }},
		{"while writing the archive", func(d *testDaemon, jobID string) {
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
				if len(halfWritten(d.ckptDir, jobID)) > 0 {
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
			t.Log("no half-written archive seen within 10 s; killing the daemon anyway")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			staging := filepath.Join(t.TempDir(), "staging")
			d := startDaemon(t, daemonOpts{Config: map[string]any{"staging_dir": staging}})
			ctr := filepath.Join(t.TempDir(), "counter")
			j := d.runJob("big", nil, py, "-c", memJobScript, ctr)
			eventually(t, 60*time.Second, "the job to fill its memory", func() bool { return readCounter(ctr) >= 1 })
			startTimeBefore := startTime(j.PID)

			bg := make(chan result, 1)
			go func() { bg <- d.cli("dump", "job", "big") }()
			tc.when(d, j.ID)
			d.crash()
			partials := halfWritten(d.ckptDir, j.ID)
			t.Logf("daemon killed; the job's process is in state %c, %d half-written file(s)", procState(j.PID), len(partials))
			d.launch()
			d.waitReady()
			var r result
			select {
			case r = <-bg:
			case <-time.After(15 * time.Second):
				t.Fatal("`dump job` did not return after the daemon died")
			}
			t.Logf("dump job interrupted by the crash: %s", r)

			for _, c := range d.checkpoints("big") {
				if c.State == "pending" {
					t.Errorf("checkpoint %s still pending after the restart", c.ID)
				}
				if c.State == "complete" {
					if _, err := os.Stat(c.Path); err != nil {
						t.Errorf("complete checkpoint %s has no archive: %v", c.ID, err)
					}
				}
			}
			if m := halfWritten(d.ckptDir, j.ID); len(m) > 0 {
				t.Errorf("half-written files remain after the restart: %v", m)
			}
			if m, _ := filepath.Glob(filepath.Join(staging, ".cedana-staging-*")); len(m) > 0 {
				t.Errorf("staging dirs of the interrupted dump remain after the restart (process memory left on disk/tmpfs): %v", m)
			}

			got := d.waitJob("big", 10*time.Second, "settled", func(j jobInfo) bool {
				return j.State != "dumping" && j.State != "restoring"
			})
			t.Logf("after the restart the job is %s", got.State)
			if startTime(j.PID) == startTimeBefore && got.State != "running" {
				t.Errorf("the job's process %d still exists but the job is %s: it is no longer managed", j.PID, got.State)
			}
			switch got.State {
			case "running":
				checkNotFrozen(t, got.PID, ctr)
				d.dumpJob("big", "--leave-running")
				checkNotFrozen(t, got.PID, ctr)
			case "checkpointed":
				waitGone(t, j.PID, 5*time.Second)
				before := readCounter(ctr)
				d.restoreJob("big")
				checkContinues(t, ctr, before)
			default:
				// The process is gone: only a complete checkpoint with its
				// archive makes that acceptable. A job lost both ways fails.
				cs := complete(d.checkpoints("big"))
				if len(cs) == 0 {
					t.Fatalf("the job's process is gone and no complete checkpoint is listed: the job was lost (it is %s: %s)", got.State, got.Error)
				}
				waitGone(t, j.PID, 5*time.Second)
				before := readCounter(ctr)
				d.restoreJob("big")
				checkContinues(t, ctr, before)
			}
			// Exactly one copy runs (its argv holds the counter's path).
			if n := copies(ctr); len(n) != 1 {
				t.Errorf("%d copies of the job run after the restart: %v", len(n), n)
			}
		})
	}
}

// checkNotFrozen asserts that pid is not left stopped (a CRIU that
// outlived the daemon may hold it for a moment) and that its counter
// advances.
func checkNotFrozen(t *testing.T, pid int, ctr string) {
	t.Helper()
	stopped := func() bool { s := procState(pid); return s == 'T' || s == 't' }
	t0 := time.Now()
	if stopped() {
		t.Logf("PID %d is stopped (%c, %s); waiting up to 5 s", pid, procState(pid), tracer(pid))
	}
	for deadline := t0.Add(5 * time.Second); stopped() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if w := time.Since(t0); w > 100*time.Millisecond {
		t.Logf("PID %d stayed stopped for %v after the restart", pid, w.Round(time.Millisecond))
	}
	if stopped() {
		t.Fatalf("PID %d is left stopped (state %c, %s)", pid, procState(pid), tracer(pid))
	}
	v := readCounter(ctr)
	eventually(t, 3*time.Second, fmt.Sprintf("the counter of PID %d to advance past %d", pid, v), func() bool { return readCounter(ctr) > v })
}

// tracer describes the process tracing pid, if any.
func tracer(pid int) string {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "TracerPid:"); ok {
			tp := strings.TrimSpace(v)
			if tp == "0" {
				return "no tracer"
			}
			cmd, _ := os.ReadFile("/proc/" + tp + "/cmdline")
			return fmt.Sprintf("traced by PID %s: %s", tp, strings.ReplaceAll(strings.TrimSpace(string(cmd)), "\x00", " "))
		}
	}
	return "tracer unknown"
}

// TestDaemonPermissions: the socket, the state dir and archives are
// root-only.
func TestDaemonPermissions(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	st, err := os.Stat(d.socket)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want srw-------", st.Mode())
	}
	d.runJob("perm", nil, "sleep", "100000")
	ck := d.dumpJob("perm", "--leave-running")
	for _, c := range []struct {
		path string
		want os.FileMode
	}{
		{d.stateDir, 0o700},
		{filepath.Join(d.stateDir, "cedana.db"), 0o600},
		{d.ckptDir, 0o700},
		{filepath.Dir(ck.Path), 0o700},
		{ck.Path, 0o600},
		{filepath.Join(d.stateDir, "logs"), 0o700},
	} {
		st, err := os.Stat(c.path)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if st.Mode().Perm() != c.want {
			t.Errorf("%s: mode %v, want %v", c.path, st.Mode().Perm(), c.want)
		}
	}
}

// The TCP listener (TLS, token, client certificates) is tested in
// secure_test.go.

// TestDaemonConcurrentDumps: two jobs dumped at the same time both
// succeed, and both restore with their state.
func TestDaemonConcurrentDumps(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	dir := t.TempDir()
	names := []string{"twin-a", "twin-b"}
	ctrs := map[string]string{}
	pids := map[string]int{}
	for _, n := range names {
		ctrs[n] = filepath.Join(dir, n)
		pids[n] = d.runJob(n, nil, "bash", "-c", counterScript(ctrs[n])).PID
	}
	for _, n := range names {
		eventually(t, 5*time.Second, n+" to count", func() bool { return readCounter(ctrs[n]) >= 5 })
	}
	var wg sync.WaitGroup
	res := make([]result, len(names))
	for i, n := range names {
		wg.Add(1)
		go func() { defer wg.Done(); res[i] = d.cli("dump", "job", n) }()
	}
	wg.Wait()
	for i, n := range names {
		if res[i].code != 0 {
			t.Errorf("concurrent dump of %s: %s", n, res[i])
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	before := map[string]int{}
	for _, n := range names {
		if j := d.job(n); j.State != "checkpointed" {
			t.Fatalf("%s is %s after its dump, want checkpointed", n, j.State)
		}
		waitGone(t, pids[n], 5*time.Second)
		before[n] = readCounter(ctrs[n])
	}
	for _, n := range names {
		d.restoreJob(n)
	}
	for _, n := range names {
		checkContinues(t, ctrs[n], before[n])
	}
}

// TestDaemonIllegalTransitions: operations that do not apply to a job's
// state are refused with a message saying so; unknown jobs are exit 3.
func TestDaemonIllegalTransitions(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	j := d.runJob("busy", nil, "sleep", "100000")

	// A running job cannot be restored, whether or not it has checkpoints:
	// the reason is its state, not a missing checkpoint.
	r := d.cli("restore", "job", "busy")
	if r.code == 0 || !strings.Contains(r.stderr, "cannot restore") {
		t.Errorf("restore job of a running job without checkpoints: want non-zero and \"cannot restore\", got %s", r)
	}
	d.dumpJob("busy", "--leave-running")
	r = d.cli("restore", "job", "busy")
	if r.code == 0 || !strings.Contains(r.stderr, "cannot restore") {
		t.Errorf("restore job of a running job: want non-zero and \"cannot restore\", got %s", r)
	}
	if !alive(j.PID) {
		t.Fatal("the running job was harmed by the refused restore")
	}

	d.dumpJob("busy")
	r = d.cli("dump", "job", "busy")
	if r.code == 0 || !strings.Contains(r.stderr, "cannot dump") {
		t.Errorf("dump job of a checkpointed job: want non-zero and \"cannot dump\", got %s", r)
	}
	if st := d.job("busy").State; st != "checkpointed" {
		t.Errorf("the refused dump changed the job's state to %s", st)
	}

	for _, args := range [][]string{
		{"dump", "job", "no-such-job"},
		{"restore", "job", "no-such-job"},
		{"kill", "no-such-job"},
		{"logs", "no-such-job"},
		{"events", "no-such-job"},
		{"checkpoints", "no-such-job"},
	} {
		if r := d.cli(args...); r.code != 3 {
			t.Errorf("cedana %s: want exit 3, got %s", strings.Join(args, " "), r)
		}
	}
}

// TestDaemonNotRunning: without a daemon, job commands exit 7 and say how
// to start one.
func TestDaemonNotRunning(t *testing.T) {
	e := newEnv(t)
	sock := filepath.Join("/tmp", fmt.Sprintf("cedana-nonexistent-%d.sock", os.Getpid()))
	for _, args := range [][]string{{"ps"}, {"daemon", "status"}, {"dump", "job", "x"}} {
		r := e.cedana(append([]string{"--address", sock}, args...)...)
		if r.code != 7 {
			t.Errorf("cedana %s without a daemon: want exit 7, got %s", strings.Join(args, " "), r)
		}
		if !strings.Contains(r.stderr, "cedana daemon start") {
			t.Errorf("cedana %s without a daemon does not say how to start it: %s", strings.Join(args, " "), r)
		}
	}
}

// TestDaemonMetrics: /metrics counts jobs by state and dumps.
func TestDaemonMetrics(t *testing.T) {
	d := startDaemon(t, daemonOpts{Metrics: true})
	d.runJob("measured", nil, "sleep", "100000")
	d.dumpJob("measured")

	resp, err := http.Get("http://" + d.metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	text := string(body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, tail(text, 500))
	}
	if !regexp.MustCompile(`(?m)^cedana_jobs\{state="checkpointed"\} 1$`).MatchString(text) {
		t.Errorf("no cedana_jobs{state=\"checkpointed\"} 1 in /metrics:\n%s", grepLines(text, "cedana_jobs"))
	}
	if !regexp.MustCompile(`(?m)^cedana_jobs\{state="running"\} 0$`).MatchString(text) {
		t.Errorf("no cedana_jobs{state=\"running\"} 0 in /metrics:\n%s", grepLines(text, "cedana_jobs"))
	}
	m := regexp.MustCompile(`(?m)^cedana_dump_duration_seconds_count (\d+)$`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no cedana_dump_duration_seconds_count in /metrics:\n%s", grepLines(text, "cedana_dump"))
	}
	if n, _ := strconv.Atoi(m[1]); n < 1 {
		t.Errorf("cedana_dump_duration_seconds_count = %d after a dump", n)
	}
	// CRIU's own figures (from its stats-dump image) are observed too.
	if m := regexp.MustCompile(`(?m)^cedana_criu_frozen_seconds_count (\d+)$`).FindStringSubmatch(text); m == nil || m[1] == "0" {
		t.Errorf("cedana_criu_frozen_seconds has no observation after a dump (CRIU's stats were not read):\n%s", grepLines(text, "cedana_criu_frozen_seconds_count"))
	}
}

// TestDaemonHooks: a pre-dump hook runs with the job's name in its
// environment; a failing one stops the dump with its message, and the job
// keeps running.
func TestDaemonHooks(t *testing.T) {
	t.Run("runs", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "hook.out")
		d := startDaemon(t, daemonOpts{Config: map[string]any{"hooks": map[string]string{
			"pre_dump": fmt.Sprintf(`echo "$CEDANA_HOOK $CEDANA_JOB_NAME" >> %s`, out),
		}}})
		d.runJob("hooked", nil, "sleep", "100000")
		d.dumpJob("hooked", "--leave-running")
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatalf("the pre-dump hook did not run: %v", err)
		}
		if got := strings.TrimSpace(string(b)); got != "pre-dump hooked" {
			t.Errorf("hook wrote %q, want \"pre-dump hooked\"", got)
		}
	})
	t.Run("failing pre_dump", func(t *testing.T) {
		d := startDaemon(t, daemonOpts{Config: map[string]any{"hooks": map[string]string{
			"pre_dump": `echo "maintenance window: no checkpoints now" >&2; exit 3`,
		}}})
		j := d.runJob("vetoed", nil, "sleep", "100000")
		r := d.cli("dump", "job", "vetoed")
		if r.code == 0 {
			t.Fatalf("dump succeeded although the pre-dump hook failed: %s", r)
		}
		if !strings.Contains(r.stderr, "maintenance window: no checkpoints now") {
			t.Errorf("the error does not show the hook's message: %s", r)
		}
		if got := d.job("vetoed"); got.State != "running" || !alive(j.PID) {
			t.Errorf("after a vetoed dump the job is %s (PID %d alive: %v), want running", got.State, j.PID, alive(j.PID))
		}
		if len(complete(d.checkpoints("vetoed"))) != 0 {
			t.Error("a vetoed dump left a complete checkpoint")
		}
	})
}

// TestDaemonManage: a process the daemon did not start is adopted, dumped
// and restored with its state.
func TestDaemonManage(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	ctr := filepath.Join(t.TempDir(), "counter")
	p := start(t, "bash", "-c", counterScript(ctr))
	eventually(t, 5*time.Second, "counter to reach 5", func() bool { return readCounter(ctr) >= 5 })

	r := d.ok("manage", itoa(p.pid()), "--name", "adopted", "-o", "json")
	var m struct {
		Adopted bool `json:"adopted"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil || !m.Adopted {
		t.Errorf("manage -o json does not say adopted (%v): %s", err, r.stdout)
	}
	if j := d.job("adopted"); j.State != "running" || j.PID != p.pid() {
		t.Fatalf("after manage: %+v, want running as PID %d", j, p.pid())
	}
	d.dumpJob("adopted")
	p.waitExit(t, 5*time.Second)
	before := readCounter(ctr)
	d.restoreJob("adopted")
	checkContinues(t, ctr, before)
}

// TestDaemonKillThenRestore: a job killed with `cedana kill` can be
// restored from its checkpoint. The daemon started the job, so only the
// daemon can reap it: if it does not, the zombie keeps the PID that the
// restore needs.
func TestDaemonKillThenRestore(t *testing.T) {
	d := startDaemon(t, daemonOpts{Config: map[string]any{"client": map[string]any{"pid_wait": "3s"}}})
	ctr := filepath.Join(t.TempDir(), "counter")
	j := d.runJob("victim", nil, "bash", "-c", counterScript(ctr))
	eventually(t, 5*time.Second, "counter to reach 5", func() bool { return readCounter(ctr) >= 5 })
	floor := readCounter(ctr) // the checkpoint holds at least this
	d.dumpJob("victim", "--leave-running")
	d.ok("kill", "victim")
	time.Sleep(500 * time.Millisecond)
	if s := procState(j.PID); s == 'Z' {
		t.Errorf("killed job's PID %d is a zombie the daemon never reaps", j.PID)
	}
	r := d.cli("restore", "job", "victim", "-o", "json")
	if r.code != 0 {
		t.Fatalf("restore job after kill: %s", r)
	}
	d.jobs()
	checkContinues(t, ctr, floor)
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
