package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lazyMemScript holds MIB MiB in which every 4 KiB page starts with its own
// index, writes a counter to CTR every 50 ms after checking 64 random
// pages, and every 40 rounds checks every page and writes the round to
// FULL. A page that lost its content (a lazy page that never arrived
// reads as zeros) makes it write CORRUPT to FULL and exit 3.
const lazyMemScript = `
import os, random, sys, time
mib, ctr, full = int(sys.argv[1]), sys.argv[2], sys.argv[3]
pages = (mib << 20) // 4096
m = bytearray(pages * 4096)
for p in range(pages):
    m[p*4096:p*4096+8] = p.to_bytes(8, 'little')
def put(path, s):
    with open(path + '.tmp', 'w') as f:
        f.write(s)
    os.replace(path + '.tmp', path)
def bad(p):
    return m[p*4096:p*4096+8] != p.to_bytes(8, 'little')
i = 0
while True:
    for p in [random.randrange(pages) for _ in range(64)]:
        if bad(p):
            put(full, 'CORRUPT page %d at round %d' % (p, i)); sys.exit(3)
    if i % 40 == 0:
        for p in range(pages):
            if bad(p):
                put(full, 'CORRUPT page %d at round %d' % (p, i)); sys.exit(3)
        put(full, str(i))
    put(ctr, str(i))
    i += 1
    time.sleep(0.05)
`

// memJob starts lazyMemScript as job name on d (in its own PID namespace)
// and waits until its memory is built and checked once.
func memJob(t *testing.T, d *testDaemon, name string, mib int) (j jobInfo, ctr, full, marker string) {
	t.Helper()
	dir := t.TempDir()
	ctr, full = filepath.Join(dir, "counter"), filepath.Join(dir, "full")
	script := filepath.Join(dir, "memjob.py")
	if err := os.WriteFile(script, []byte(lazyMemScript), 0o644); err != nil {
		t.Fatal(err)
	}
	marker = fmt.Sprintf("cedana-test-marker-%d-%s", time.Now().UnixNano(), name)
	j = d.runJob(name, []string{"--pid-namespace"}, "python3", script, strconv.Itoa(mib), ctr, full, marker)
	eventually(t, 60*time.Second, "the job to build its memory", func() bool { return readCounter(ctr) >= 3 })
	return j, ctr, full, marker
}

// fullCheckAfter waits until the job has checked every page in a round
// after round, and fails on CORRUPT.
func fullCheckAfter(t *testing.T, full string, round int) {
	t.Helper()
	eventually(t, 60*time.Second, fmt.Sprintf("a full check of the job's memory after round %d", round), func() bool {
		b, _ := os.ReadFile(full)
		if strings.HasPrefix(string(b), "CORRUPT") {
			t.Fatalf("the job found its memory damaged: %s", b)
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && n > round
	})
}

// lazyPagesOf finds the `criu lazy-pages` process among the descendants
// of daemon PID pid (by the process tree, never by name alone).
func lazyPagesOf(pid int) int {
	for _, c := range descendants(pid) {
		// The criu wrapper runs CRIU through its own loader: criu's path
		// is then an argument, not argv[0].
		args, isCRIU, lazy := procCmdline(c), false, false
		for _, a := range args {
			isCRIU = isCRIU || strings.HasSuffix(a, "/criu")
			lazy = lazy || a == "lazy-pages"
		}
		if isCRIU && lazy {
			return c
		}
	}
	return 0
}

func procCmdline(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// TestClusterLazyMigrate: a job holding 1 GiB migrates lazily from a to
// b. The archive that moves holds no memory (a few MiB); the job runs on
// b before its memory arrived, one copy at every moment, its counter
// going on; once `migrate` returns, every page of the 1 GiB is back with
// its content (the job checks each one), the source copy is gone, and the
// job can be checkpointed on b.
func TestClusterLazyMigrate(t *testing.T) {
	requireLazyMigration(t)
	ds, _ := embeddedCluster(t, "a", "b")
	a, b := ds[0], ds[1]
	waitNodes(t, b, 2)
	j, ctr, full, marker := memJob(t, a, "big", 1024)

	stop := make(chan struct{})
	seen := watchCopies(marker, ctr, stop)
	before := readCounter(ctr)
	r := a.ok("migrate", "big", "--to", "b", "--lazy", "-o", "json")
	var m migrateInfo
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatalf("migrate -o json: %v\n%s", err, r.stdout)
	}
	t.Logf("lazy migration of 1 GiB: %s bytes moved in the archive, downtime %s ms, total %s ms, memory all in %s ms after the resume", m.Bytes, m.DowntimeMS, m.TotalMS, m.MemoryMS)
	checkContinues(t, ctr, before)
	if n, _ := strconv.ParseInt(m.Bytes, 10, 64); n <= 0 || n > 64<<20 {
		t.Errorf("the archive moved has %s bytes; a lazy migration's archive holds no memory (want 0 < n ≤ 64 MiB)", m.Bytes)
	}
	after := readCounter(ctr)
	fullCheckAfter(t, full, after)
	close(stop)
	if what := <-seen; what != "" {
		t.Fatal(what)
	}
	got, ok := findJob(clusterJobs(t, a), "big")
	if !ok || got.Node != "b" || got.State != "running" || got.ID != j.ID {
		t.Fatalf("after the lazy migration ps says %+v; want job %s running on b", got, j.ID)
	}
	if cs := runningCopies(marker); len(cs) != 1 || cs[0] != got.PID {
		t.Fatalf("copies after the migration: %v; want exactly b's PID %d", cs, got.PID)
	}
	if alive(j.PID) && procState(j.PID) != 'Z' {
		t.Fatalf("the source copy (PID %d) still exists after the migration", j.PID)
	}
	if ev := b.ok("events", "big").stdout; !strings.Contains(ev, "memory-arrived") {
		t.Errorf("events on b lack memory-arrived:\n%s", ev)
	}
	// Its memory is all here: it can be checkpointed on b (and the
	// migration's archive, which holds no memory, is no checkpoint).
	b.ok("dump", "job", "big", "--leave-running")
	checkContinues(t, ctr, readCounter(ctr))
}

// TestClusterLazyMigrateMemoryLost: the target's lazy-pages daemon is
// killed while the memory of a 512 MiB job is still arriving (what a cut
// network does). The target kills its copy rather than let it read zeros,
// hands the job back, and the source's stopped copy runs again: migrate
// fails saying so, the job runs on a with its memory whole, and at no
// moment did two copies run.
func TestClusterLazyMigrateMemoryLost(t *testing.T) {
	requireLazyMigration(t)
	ds, _ := embeddedCluster(t, "a", "b")
	a, b := ds[0], ds[1]
	waitNodes(t, b, 2)
	j, ctr, full, marker := memJob(t, a, "big", 512)

	// Kill b's lazy-pages daemon as soon as it runs (the job may or may
	// not have been resumed on b by then: both ways must end on a).
	killed := make(chan int, 1)
	go func() {
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			if p := lazyPagesOf(b.pid()); p > 0 {
				time.Sleep(150 * time.Millisecond)
				_ = syscall.Kill(p, syscall.SIGKILL)
				killed <- p
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		killed <- 0
	}()
	running := make(chan int, 1)
	stop := make(chan struct{})
	go func() { // at most one running copy, whatever happens
		most := 0
		for {
			select {
			case <-stop:
				running <- most
				return
			default:
			}
			most = max(most, len(confirmedRunning(marker)))
			time.Sleep(2 * time.Millisecond)
		}
	}()
	r := a.cli("migrate", "big", "--to", "b", "--lazy")
	if p := <-killed; p == 0 {
		t.Fatal("b never started a lazy-pages daemon")
	}
	if r.code == 0 || !strings.Contains(r.stderr, "runs here again") {
		t.Fatalf("migrate with the memory cut off: %s; want a non-zero exit saying the job runs on a again", r)
	}
	eventually(t, 30*time.Second, "the job to run on a again", func() bool {
		got, ok := findJob(clusterJobs(t, a), "big")
		return ok && got.Node == "a" && got.State == "running"
	})
	got, _ := findJob(clusterJobs(t, a), "big")
	if got.PID != j.PID {
		t.Errorf("the job runs on a as PID %d; want its stopped copy %d resumed", got.PID, j.PID)
	}
	checkContinues(t, ctr, readCounter(ctr))
	fullCheckAfter(t, full, readCounter(ctr))
	close(stop)
	if most := <-running; most > 1 {
		t.Fatalf("%d copies of the job ran at once", most)
	}
	if cs := runningCopies(marker); len(cs) != 1 || cs[0] != j.PID {
		t.Fatalf("copies after the failed lazy migration: %v; want exactly a's PID %d", cs, j.PID)
	}
	if js := clusterJobs(t, b, "--node", "b"); len(js) != 0 {
		t.Fatalf("ps --node b: %+v; want nothing", js)
	}
}

// requireLazyMigration skips (with the reason) where CRIU's lazy page
// server cannot work: `make setup` raises fs.pipe-max-size, so CI has it.
func requireLazyMigration(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || n < 4<<20 {
		if os.Getenv("CI") != "" {
			t.Fatalf("fs.pipe-max-size is %s; make setup raises it to 4194304 for lazy migration", strings.TrimSpace(string(b)))
		}
		t.Skipf("fs.pipe-max-size is %s, lazy migration needs 4194304 (make setup)", strings.TrimSpace(string(b)))
	}
}
