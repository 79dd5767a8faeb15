package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestClusterPushTargetDies: a stop-and-copy migration streams the
// archive to the target while the dump writes it (internal/daemon/push.go).
// The target daemon is killed (SIGKILL) in the middle of receiving a
// 512 MiB job's archive: the migration fails, saying the job still runs on
// the source, within the node timeout (not the tunnel's 30 s), the job
// runs on as the same process (one copy at every moment, its counter never
// going back), and the restarted target removes the partial archive it was
// receiving.
func TestClusterPushTargetDies(t *testing.T) {
	ds, _ := embeddedCluster(t, "a", "b")
	a, b := ds[0], ds[1]
	j, ctr, marker := bigJob(t, a, "pushdies")

	stop := make(chan struct{})
	seen := watchCopies(marker, ctr, stop)
	// Wait until b holds part of the archive, then kill it.
	part, size, res := midPush(t, a, b)
	killed := time.Now()
	b.crash()
	t.Logf("killed b with %d bytes of the archive in %s", size, part)

	var r result
	select {
	case r = <-res:
	case <-time.After(25 * time.Second):
		t.Fatal("migrate still waits 25 s after its target died")
	}
	took := time.Since(killed)
	t.Logf("migrate returned %v after the target died: %s", took.Round(time.Millisecond), r)
	if r.code == 0 || !strings.Contains(r.stderr, "still runs on node a") {
		t.Fatalf("migrate to a target killed mid-transfer: %s; want a non-zero exit saying the job still runs on a", r)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	if what := <-seen; what != "" {
		t.Fatal(what)
	}
	stillOn(t, a, "big", "a", j.PID, marker, ctr)

	// The restarted target removes what it was receiving.
	b.launch()
	b.waitReady()
	if parts, _ := filepath.Glob(filepath.Join(b.ckptDir, "*", "*.part")); len(parts) != 0 {
		t.Fatalf("after its restart b still holds partial archives: %v", parts)
	}
	// And the job still migrates there.
	migratesAgain(t, a, b, ctr, marker)
}

// TestClusterPushTargetFrozen: the target's daemon is frozen (SIGSTOP,
// as a hung or paused VM) while it receives a 512 MiB job's archive. The
// source sees it down within the node timeout and the job keeps running
// there; once thawed, the target never runs the job, lists nothing, and
// removes the partial archive by itself; the job still migrates to it.
func TestClusterPushTargetFrozen(t *testing.T) {
	ds, _ := embeddedCluster(t, "a", "b")
	var thaw func()
	targetLostMidPush(t, ds[0], ds[1], "froze", func() { thaw = freeze(t, ds[1]) }, func() { thaw() })
}

// targetLostMidPush migrates job "big" (512 MiB) from a to b and, once b
// receives the archive, makes b lose touch (lose: frozen, cut off). The
// migration must fail within the node timeout and a few seconds — not
// after the 10 s of a courtesy abort that a lost node never answers —
// saying the job still runs on a, where it runs on as the same process;
// once b is back (back), it neither runs the job nor keeps what it
// received, and the job still migrates to it. At no sample do two copies
// run.
func targetLostMidPush(t *testing.T, a, b *testDaemon, how string, lose, back func()) {
	t.Helper()
	j, ctr, marker := bigJob(t, a, "push"+strings.ReplaceAll(how, " ", ""))
	stop := make(chan struct{})
	seen := watchCopies(marker, ctr, stop)
	part, size, res := midPush(t, a, b)
	lose()
	lost := time.Now()
	t.Logf("%s b with %d bytes of the archive in %s", how, size, part)

	var r result
	select {
	case r = <-res:
	case <-time.After(25 * time.Second):
		t.Fatalf("migrate still waits 25 s after its target was %s", how)
	}
	took := time.Since(lost)
	t.Logf("migrate returned %v after the target was %s: %s", took.Round(time.Millisecond), how, r)
	if took > 9*time.Second {
		t.Errorf("migrate returned %v after its target was %s; want it within the node timeout and a few seconds", took, how)
	}
	if r.code == 0 || !strings.Contains(r.stderr, "still runs on node a") {
		t.Fatalf("migrate to a target %s mid-transfer: %s; want a non-zero exit saying the job still runs on a", how, r)
	}
	stillOn(t, a, "big", "a", j.PID, marker, ctr)

	// Back, b catches up with whatever was queued for it and must
	// neither run the job nor keep what it received.
	back()
	b.waitReady()
	eventually(t, 2*pushSilenceForTests, "b to remove the partial archive", func() bool {
		parts, _ := filepath.Glob(filepath.Join(b.ckptDir, "*", "*.part"))
		return len(parts) == 0
	})
	if js := clusterJobs(t, b, "--node", "b"); len(js) != 0 {
		t.Fatalf("b lists %+v; the job never moved", js)
	}
	close(stop)
	if what := <-seen; what != "" {
		t.Fatal(what)
	}
	if cs := runningCopies(marker); len(cs) != 1 || cs[0] != j.PID {
		t.Fatalf("copies running: %v; want exactly a's PID %d", cs, j.PID)
	}
	migratesAgain(t, a, b, ctr, marker)
}

// TestClusterPushTargetCutOff: the target's network link goes down while
// it receives a 512 MiB job's archive (its daemon in its own network
// namespace, NATS on the other side: nothing reaches it, its processes run
// on). The source sees it down within the node timeout and the job keeps
// running there, the same process; when the link comes back the target
// never runs the job, lists nothing, and removes the partial archive by
// itself (the abort sent while it was cut off is lost with core NATS); the
// job still migrates to it.
func TestClusterPushTargetCutOff(t *testing.T) {
	ds, ns := failoverNodes(t, 2, true)
	t.Cleanup(func() { setLink(t, ns[1], "up") })
	targetLostMidPush(t, ds[0], ds[1], "cut off", func() { setLink(t, ns[1], "down") }, func() { setLink(t, ns[1], "up") })
}

// TestClusterPushSourceCutOff: the source's network link goes down while
// it pushes a 512 MiB job's archive to the target. Cut off, the source
// cannot renew the job's lease and its fencer freezes the (already
// stopped) tree at the deadline; when the migration then fails, the
// source resumes its tree and must stop it again at once: a cut-off node
// never runs a job whose lease it does not hold. The target never runs
// it, and at no sample do two copies run.
func TestClusterPushSourceCutOff(t *testing.T) {
	ds, ns := failoverNodes(t, 2, true)
	a, b := ds[0], ds[1]
	j, _, marker := bigJob(t, a, "pushsrccut")
	eventually(t, 20*time.Second, "a to hold the job's lease", func() bool {
		r := b.cli("ps", "-o", "json")
		return r.code == 0 && strings.Contains(r.stdout, `"big"`)
	})
	sampler := sampleCopies(marker)
	_, size, res := midPush(t, a, b)
	setLink(t, ns[0], "down")
	t.Cleanup(func() { setLink(t, ns[0], "up") })
	t.Logf("cut a off with %d bytes of the archive pushed", size)
	var r result
	select {
	case r = <-res:
	case <-time.After(90 * time.Second):
		t.Fatal("migrate still waits 90 s after its source was cut off")
	}
	t.Logf("migrate: %s", r)
	if r.code == 0 {
		t.Fatalf("migrate from a cut-off source succeeded: %s", r)
	}
	// Still cut off, past the lease's deadline: the tree stays stopped.
	for range 10 {
		if st := procState(j.PID); st != 'T' && st != 't' {
			t.Fatalf("a's copy (PID %d) is in state %c while a is cut off and holds no lease", j.PID, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	setLink(t, ns[0], "up")
	a.waitReady()
	time.Sleep(2 * nodeTimeout) // a settles the job with the cluster
	if n, twin := sampler.finish(); n > 1 {
		t.Errorf("%d copies ran at once (for %v)", n, twin)
	}
	if js := clusterJobs(t, b, "--node", "b"); len(js) != 0 {
		t.Fatalf("b lists %+v; the job never moved", js)
	}
}

// TestClusterTargetFrozenDuringRestore: the target's daemon is frozen
// the moment the whole archive has arrived, as it starts the restore (or
// just before): it answers nothing. The migration fails within the node
// timeout — not after the 10 s of an abort the frozen target never
// answers — and the job runs on as the same process; once thawed, the
// target never resumes its copy, removes it, and lists nothing.
func TestClusterTargetFrozenDuringRestore(t *testing.T) {
	ds, _ := embeddedCluster(t, "a", "b")
	a, b := ds[0], ds[1]
	j, ctr, marker := bigJob(t, a, "restorefrozen")

	stop := make(chan struct{})
	seen := watchCopies(marker, ctr, stop)
	res := make(chan result, 1)
	go func() { res <- a.cli("migrate", "big", "--to", "b") }()
	var (
		frozen time.Time
		thaw   func()
	)
	for deadline := time.Now().Add(60 * time.Second); frozen.IsZero(); time.Sleep(2 * time.Millisecond) {
		if arrived, _ := filepath.Glob(filepath.Join(b.ckptDir, "*", "migrated-from-a-*.cedana")); len(arrived) > 0 {
			thaw = freeze(t, b)
			frozen = time.Now()
			t.Logf("froze b once %s had arrived", arrived[0])
		}
		select {
		case r := <-res:
			t.Fatalf("the migration ended before its archive had all arrived: %s", r)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the archive never arrived whole on b")
		}
	}
	var r result
	select {
	case r = <-res:
	case <-time.After(25 * time.Second):
		t.Fatal("migrate still waits 25 s after its target froze")
	}
	took := time.Since(frozen)
	t.Logf("migrate returned %v after the target froze: %s", took.Round(time.Millisecond), r)
	if r.code == 0 || !strings.Contains(r.stderr, "still runs on node a") {
		t.Fatalf("migrate to a target frozen during the restore: %s; want it to say the job still runs on a", r)
	}
	// The node timeout (3 s), the watch's second and abortWait (1 s),
	// not the 10 s of an abort the frozen target never answers.
	if took > 9*time.Second {
		t.Errorf("migrate returned %v after its target froze; want within the node timeout and a few seconds", took)
	}
	stillOn(t, a, "big", "a", j.PID, marker, ctr)

	// Thawed, b finishes its restore; its copy must never run, and goes
	// as soon as b reads the abort — not 60 s later, when it would settle
	// from the record.
	thaw()
	eventually(t, 20*time.Second, "b to drop its copy", func() bool {
		return len(clusterJobs(t, b, "--node", "b")) == 0 && len(copies(marker)) == 1
	})
	close(stop)
	if what := <-seen; what != "" {
		t.Fatal(what)
	}
	if cs := runningCopies(marker); len(cs) != 1 || cs[0] != j.PID {
		t.Fatalf("copies running: %v; want exactly a's PID %d", cs, j.PID)
	}
}

// TestClusterPushSourceDies: the source daemon is killed (SIGKILL) while
// it pushes a 512 MiB job's archive to the target. Nothing moved: the
// job must never run on the target, at most one copy runs at any moment
// and its counter never goes back; once the source's daemon is back, the
// job runs there (as before, or resumed by its recovery) and the target
// has removed the partial archive by itself (its source went silent).
func TestClusterPushSourceDies(t *testing.T) {
	nc := startNATSCluster(t, "127.0.0.1")
	a := startNode(t, "a", map[string]any{"nats_urls": nc.url(), "node_timeout": "10s"}, nil)
	b := startNode(t, "b", map[string]any{"nats_urls": nc.url(), "node_timeout": "10s"}, nil)
	waitNodes(t, a, 2)
	_, ctr, marker := bigJob(t, a, "pushsrcdies")

	stop := make(chan struct{})
	seen := watchCopies(marker, ctr, stop)
	part, _, res := midPush(t, a, b)
	a.crash()
	r := <-res
	t.Logf("killed a's daemon while b received %s; migrate: %s", part, r)
	if r.code == 0 {
		t.Fatalf("migrate succeeded although its daemon was killed mid-transfer: %s", r)
	}

	a.launch()
	a.waitReady()
	var j clusterJob
	eventually(t, 60*time.Second, "the job to run on a again", func() bool {
		var ok bool
		j, ok = findJob(clusterJobs(t, a), "big")
		return ok && j.Node == "a" && j.State == "running"
	})
	a.trackJobs([]jobInfo{j.jobInfo})
	checkContinues(t, ctr, readCounter(ctr))
	eventually(t, 2*pushSilenceForTests, "b to remove the partial archive", func() bool {
		parts, _ := filepath.Glob(filepath.Join(b.ckptDir, "*", "*.part"))
		return len(parts) == 0
	})
	close(stop)
	if what := <-seen; what != "" {
		t.Fatal(what)
	}
	if cs := runningCopies(marker); len(cs) != 1 || cs[0] != j.PID {
		t.Fatalf("copies running: %v; want exactly a's PID %d", cs, j.PID)
	}
	if js := clusterJobs(t, b, "--node", "b"); len(js) != 0 {
		t.Fatalf("b lists %+v; the job never moved", js)
	}
}

// pushSilenceForTests is how long a target waits for a silent source
// (internal/daemon's pushSilence) plus its check interval.
const pushSilenceForTests = 31 * time.Second

// midPush starts `migrate big --to b` on a and waits until b holds more
// than 8 MiB of the archive being pushed: the moment to break something.
// It returns the partial archive, its size then, and where migrate's
// result arrives.
func midPush(t *testing.T, a, b *testDaemon) (string, int64, <-chan result) {
	t.Helper()
	res := make(chan result, 1)
	go func() { res <- a.cli("migrate", "big", "--to", "b") }()
	var part string
	var size int64
	eventually(t, 30*time.Second, "b to be receiving the archive", func() bool {
		parts, _ := filepath.Glob(filepath.Join(b.ckptDir, "*", "*.part"))
		for _, p := range parts {
			if fi, err := os.Stat(p); err == nil && fi.Size() > 8<<20 {
				part, size = p, fi.Size()
				return true
			}
		}
		select {
		case r := <-res:
			t.Fatalf("the migration ended before it could be broken in the middle: %s", r)
		default:
		}
		return false
	})
	return part, size, res
}

// bigJob runs job "big" on a: a Python process holding 512 MiB that
// counts in a file (in its own PID namespace, so that it can migrate),
// and waits until it counts.
func bigJob(t *testing.T, a *testDaemon, tag string) (jobInfo, string, string) {
	t.Helper()
	python := requireBinary(t, "python3")
	ctr := filepath.Join(t.TempDir(), "counter")
	marker := fmt.Sprintf("cedana-test-marker-%d-%s", time.Now().UnixNano(), tag)
	j := a.runJob("big", []string{"--pid-namespace"}, python, "-c", memLoopScript(ctr, 512), marker)
	eventually(t, 60*time.Second, "the counter to start", func() bool { return readCounter(ctr) >= 3 })
	return j, ctr, marker
}

// freeze stops d's daemon (SIGSTOP, as a hung or paused VM) and returns
// what thaws it; the test thaws it at its end in any case.
func freeze(t *testing.T, d *testDaemon) (thaw func()) {
	t.Helper()
	pid := d.pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	thaw = func() { once.Do(func() { _ = syscall.Kill(pid, syscall.SIGCONT) }) }
	t.Cleanup(thaw)
	return thaw
}

// migratesAgain: after a failed migration job "big" still migrates from a
// to b, its counter going on, one copy running.
func migratesAgain(t *testing.T, a, b *testDaemon, ctr, marker string) {
	t.Helper()
	before := readCounter(ctr)
	m := migrate(t, a, "big", "b")
	b.trackJobs([]jobInfo{m.Job})
	checkContinues(t, ctr, before)
	if cs := runningCopies(marker); len(cs) != 1 {
		t.Fatalf("copies after the migration: %v", cs)
	}
}
