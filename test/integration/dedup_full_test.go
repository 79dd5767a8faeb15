package integration

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cedana/cedana/internal/chunks"
)

// A full disk under the deduplicated local store (internal/chunks,
// docs/periodic.md, "Storing only what changed").

// rewriteScript is a Python job holding 64 MiB of random memory. Each
// round it checks that its memory is what it left (the SHA-256 it took at
// the end of the previous round: a restore that damaged the memory is
// seen), rewrites the first half with new random bytes, and writes
// "ROUND intact|damaged" to path.
func rewriteScript(path string) string {
	return fmt.Sprintf(`
import hashlib, os, time
N, CHANGE = 64 << 20, 32 << 20
mem = bytearray(N)
view = memoryview(mem)
rnd = open("/dev/urandom", "rb", buffering=0)
def fill(n):
    off = 0
    while off < n:
        off += rnd.readinto(view[off:min(n, off + (1 << 24))])
fill(N)
prev = hashlib.sha256(mem).digest()
intact, i = True, 0
while True:
    if hashlib.sha256(mem).digest() != prev:
        intact = False
    fill(CHANGE)
    prev = hashlib.sha256(mem).digest()
    i += 1
    with open(%[1]q + ".tmp", "w") as f:
        f.write("%%d %%s" %% (i, "intact" if intact else "damaged"))
    os.replace(%[1]q + ".tmp", %[1]q)
    time.sleep(0.3)
`, path)
}

// readRound returns the round a rewriteScript job reported and whether
// its memory was intact; -1 while the file is missing.
func readRound(path string) (int, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return -1, false
	}
	var n int
	var s string
	if _, err := fmt.Sscanf(string(data), "%d %s", &n, &s); err != nil {
		return -1, false
	}
	return n, s == "intact"
}

// dedupDir is what a job's deduplicated checkpoint directory holds.
type dedupDir struct {
	objects []string          // files chunks.IsCheckpointFile accepts
	chunks  map[string]string // digest → chunk file
	debris  []string          // temporary or partial files
}

// scanDedupDir lists a job's checkpoint directory.
func scanDedupDir(t *testing.T, dir string) dedupDir {
	t.Helper()
	out := dedupDir{chunks: map[string]string{}}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		base := e.Name()
		switch {
		case strings.HasPrefix(base, ".cedana-") || strings.Contains(base, ".partial-"):
			out.debris = append(out.debris, p)
		case filepath.Base(filepath.Dir(filepath.Dir(p))) == "sha256":
			out.chunks[base] = p
		case chunks.IsCheckpointFile(p):
			out.objects = append(out.objects, p)
		default:
			out.debris = append(out.debris, p) // a file nothing explains
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out.objects)
	return out
}

// namedChunks returns the digests the checkpoints cs name.
func namedChunks(t *testing.T, cs []ckptInfo) map[string]bool {
	t.Helper()
	named := map[string]bool{}
	for _, c := range cs {
		for _, d := range checkpointChunks(t, c.Path) {
			named[d] = true
		}
	}
	return named
}

// ckptPaths returns the paths of cs, sorted.
func ckptPaths(cs []ckptInfo) []string {
	var ps []string
	for _, c := range cs {
		ps = append(ps, c.Path)
	}
	slices.Sort(ps)
	return ps
}

// fillFS writes a file into the filesystem of dir that leaves about
// leave bytes free, and returns its path.
func fillFS(t *testing.T, dir string, leave int64) string {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	n := int64(st.Bavail)*st.Bsize - leave
	if n <= 0 {
		t.Fatalf("%s has only %d bytes free, want more than %d", dir, int64(st.Bavail)*st.Bsize, leave)
	}
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1) // written, not a hole
	}
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := f.Write(buf[:k]); err != nil {
			t.Fatalf("fill %s: %v", dir, err)
		}
		n -= k
	}
	return p
}

// topUp appends to the file at p until its filesystem is full.
func topUp(t *testing.T, p string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = 1
	}
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, unix.ENOSPC) {
				break
			}
			t.Fatal(err)
		}
	}
	for _, n := range []int{4096, 512, 1} { // the last partial page
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				break
			}
		}
	}
}

// TestDaemonDedupDiskFull: periodic deduplicated checkpoints of a 64 MiB
// job into a checkpoint directory on a 160 MiB tmpfs. After a good
// checkpoint the filesystem is filled up to 20 MiB: the next checkpoint
// stores a few new chunks (4 writers of 4 MiB chunks cannot fill 20 MiB
// before one of them finishes; the job rewrites half its memory per round
// so that more than 20 MiB of chunks are new), then hits ENOSPC; with the
// rest filled too, the next fails on its own object. The job keeps running
// with its memory intact; each attempt is recorded failed with "store is
// full"; no checkpoint object, temporary or partial file is left (without
// a daemon restart); the good checkpoint verifies and restores with its
// state. Once the space is freed the next periodic checkpoint succeeds,
// and the failed attempt's unreferenced chunks survive a deletion while
// younger than the grace period (10 minutes; the test backdates them
// rather than waiting) and are collected by the next deletion after it.
func TestDaemonDedupDiskFull(t *testing.T) {
	disk := smallTmpfs(t, "160m")
	d := startDaemon(t, daemonOpts{
		Daemon: map[string]any{"checkpoint_dir": disk},
		// CRIU's images must not be staged on the full disk: the test is
		// about the store.
		Config: map[string]any{"staging_dir": t.TempDir()},
	})
	counter := filepath.Join(t.TempDir(), "round")
	job := d.runJob("hog", nil, "python3", "-c", rewriteScript(counter))
	jobDir := filepath.Join(disk, job.ID)
	eventually(t, 30*time.Second, "the job to fill its memory", func() bool { n, _ := readRound(counter); return n >= 1 })
	periodic := func(every string) {
		t.Helper()
		d.ok("policy", "hog", "--checkpoint-every", every, "--keep", "1000")
		if every != "1s" {
			// Wait out a checkpoint the change may have found running.
			d.waitJob("hog", time.Minute, "running", func(j jobInfo) bool { return j.State == "running" })
		}
	}

	// 1. A good checkpoint, then no more until the disk is full.
	periodic("1s")
	eventually(t, 30*time.Second, "a first checkpoint", func() bool { return len(complete(d.checkpoints("hog"))) >= 1 })
	periodic("1h")
	good := complete(d.checkpoints("hog"))
	roundAtGood, _ := readRound(counter)
	filler := fillFS(t, disk, 20<<20)

	// 2. The next periodic checkpoint fails: disk full. With 20 MiB free
	// it fails while storing chunks; once the filler takes the rest, the
	// next one fails on the checkpoint's own object (the skeleton).
	failNext := func() ckptInfo {
		t.Helper()
		seen := map[string]bool{}
		for _, c := range d.checkpoints("hog") {
			seen[c.ID] = true
		}
		periodic("1s")
		var failed ckptInfo
		eventually(t, 30*time.Second, "a checkpoint to fail on the full disk", func() bool {
			for _, c := range d.checkpoints("hog") {
				if !seen[c.ID] && c.State != "pending" {
					failed = c
					return true
				}
			}
			return false
		})
		periodic("1h")
		for _, c := range d.checkpoints("hog") {
			if !seen[c.ID] && c.State == "complete" {
				t.Fatalf("checkpoint %s onto the full disk is recorded complete", c.ID)
			}
			if !seen[c.ID] {
				if _, err := os.Stat(c.Path); !os.IsNotExist(err) {
					t.Errorf("failed checkpoint %s left an object at %s (%v)", c.ID, c.Path, err)
				}
			}
		}
		if failed.State != "failed" {
			t.Fatalf("a checkpoint onto a full disk is %s, not failed: %+v", failed.State, failed)
		}
		if !strings.Contains(failed.Error, "store is full") || !strings.Contains(failed.Error, "free space on") {
			t.Errorf("the failed checkpoint's error does not say the disk is full: %q", failed.Error)
		}
		if !slices.ContainsFunc(d.events("hog"), func(e eventInfo) bool {
			return e.Type == "dump-failed" && strings.Contains(e.Message, "kept running") && strings.Contains(e.Message, "store is full")
		}) {
			t.Errorf("no dump-failed event saying the store is full: %+v", d.events("hog"))
		}
		if j := d.job("hog"); j.State != "running" || j.Error != "" || j.PID != job.PID {
			t.Fatalf("after the failed checkpoint the job is %+v, want running as PID %d", j, job.PID)
		}
		if s := procState(job.PID); s != 'R' && s != 'S' && s != 'D' {
			t.Fatalf("after the failed checkpoint PID %d is in state %c", job.PID, s)
		}
		n0, _ := readRound(counter)
		eventually(t, 20*time.Second, "the job to go on counting", func() bool { n, _ := readRound(counter); return n >= n0+2 })
		if _, ok := readRound(counter); !ok {
			t.Fatal("the job's memory changed under it during the failed checkpoint")
		}
		if s := scanDedupDir(t, jobDir); len(s.debris) > 0 {
			t.Errorf("the failed checkpoint left temporary or partial files: %v", s.debris)
		}
		return failed
	}
	failed := failNext()
	if !strings.Contains(failed.Error, "/chunks/sha256/") {
		// Possible when the last frames were already handed to the chunk
		// writers: the skeleton's tail then meets the full disk first.
		// What matters, that chunks were stored, is checked below.
		t.Logf("with 20 MiB free the checkpoint failed on its own object, not on a chunk")
	}
	topUp(t, filler)
	failed2 := failNext()
	if !strings.Contains(failed2.Error, "write "+job.ID+"/"+filepath.Base(failed2.Path)+": store is full") {
		t.Errorf("with the disk full the checkpoint failed elsewhere than on its own object: %s", failed2.Error)
	}
	full := scanDedupDir(t, jobDir)
	if !slices.Equal(full.objects, ckptPaths(good)) {
		t.Errorf("checkpoint objects on the full disk: %v, want only the good ones %v", full.objects, ckptPaths(good))
	}
	if len(full.debris) > 0 {
		t.Errorf("the failed checkpoint left temporary or partial files: %v", full.debris)
	}
	named := namedChunks(t, good)
	var orphans []string
	for dg := range full.chunks {
		if !named[dg] {
			orphans = append(orphans, dg)
		}
	}
	for dg := range named {
		if full.chunks[dg] == "" {
			t.Errorf("chunk %s of a good checkpoint is missing", dg)
		}
	}
	if len(orphans) == 0 {
		t.Fatal("the failed checkpoint stored no chunk before the disk filled up: the test does not exercise collection")
	}
	t.Logf("disk full: %d good checkpoint(s), failed %s after storing %d chunk(s): %s", len(good), failed.ID, len(orphans), failed.Error)
	for _, c := range good {
		d.ok("inspect", "--verify", c.Path)
	}

	t.Logf("then %s: %s", failed2.ID, failed2.Error)

	// A daemon that restarts on the full disk finds the job running and
	// the records as they were.
	states := map[string]string{}
	for _, c := range d.checkpoints("hog") {
		states[c.ID] = c.State
	}
	t0 := time.Now()
	d.restartDaemon()
	t.Logf("daemon restarted on the full disk in %v", time.Since(t0).Round(time.Millisecond))
	if j := d.job("hog"); j.State != "running" || j.PID != job.PID {
		t.Fatalf("after a restart on the full disk the job is %+v, want running as PID %d", j, job.PID)
	}
	for _, c := range d.checkpoints("hog") {
		if states[c.ID] != c.State {
			t.Errorf("after a restart checkpoint %s is %s, was %s", c.ID, c.State, states[c.ID])
		}
	}

	// 3. Space freed: the next periodic checkpoints succeed.
	t0 = time.Now()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	periodic("1s")
	eventually(t, 40*time.Second, "two checkpoints after the space was freed", func() bool {
		return len(complete(d.checkpoints("hog"))) >= len(good)+2
	})
	periodic("1h")
	t.Logf("two checkpoints after the space was freed in %v", time.Since(t0).Round(time.Millisecond))
	roundAtFresh, _ := readRound(counter)
	all := complete(d.checkpoints("hog")) // newest first
	fresh := all[:len(all)-len(good)]
	if after := scanDedupDir(t, jobDir); len(after.debris) > 0 {
		t.Errorf("temporary or partial files left: %v", after.debris)
	}
	for _, c := range fresh {
		d.ok("inspect", "--verify", c.Path)
	}

	// The good checkpoint restores with its state: the round it had
	// reached, memory intact.
	last, _ := readRound(counter)
	if last <= roundAtGood+3 {
		t.Fatalf("the job counted only from %d to %d meanwhile: a restore could not tell the checkpoint's round", roundAtGood, last)
	}
	restoreAt := func(c ckptInfo, maxRound int) {
		t.Helper()
		pid := d.job("hog").PID
		d.ok("kill", "hog")
		waitGone(t, pid, 30*time.Second)
		os.Remove(counter)
		d.restoreJob("hog", "--checkpoint", c.ID)
		first := -1
		eventually(t, 30*time.Second, "the restored job to count", func() bool {
			first, _ = readRound(counter)
			return first >= 1
		})
		if first > maxRound+1 {
			t.Errorf("restored from %s, the job counts from %d: its checkpoint was taken by round %d", c.ID, first, maxRound)
		}
		eventually(t, 20*time.Second, "the restored job to go on", func() bool { n, _ := readRound(counter); return n >= first+2 })
		if _, ok := readRound(counter); !ok {
			t.Errorf("restored from %s, the job's memory is damaged", c.ID)
		}
	}
	restoreAt(good[0], roundAtGood)

	// 4. Collection: chunks nothing names survive a deletion while younger
	// than the grace period, and go with the next one after it.
	d.ok("checkpoint", "rm", good[0].ID)
	for _, c := range good[1:] {
		d.ok("checkpoint", "rm", c.ID)
	}
	mid := scanDedupDir(t, jobDir)
	for _, dg := range orphans {
		if mid.chunks[dg] == "" {
			t.Errorf("chunk %s of the failed checkpoint was collected within the grace period", dg)
		}
	}
	keep := fresh[:1] // the newest
	keepNamed := namedChunks(t, keep)
	old := time.Now().Add(-chunks.DefaultGrace - time.Minute)
	for dg, p := range mid.chunks {
		if !keepNamed[dg] {
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, c := range fresh[1:] {
		d.ok("checkpoint", "rm", c.ID)
	}
	end := scanDedupDir(t, jobDir)
	if !slices.Equal(end.objects, ckptPaths(keep)) || len(end.debris) > 0 {
		t.Errorf("left after the deletions: checkpoints %v, other files %v; want only %v", end.objects, end.debris, ckptPaths(keep))
	}
	for dg := range end.chunks {
		if !keepNamed[dg] {
			t.Errorf("chunk %s, named by no checkpoint and past the grace period, was not collected", dg)
		}
	}
	for dg := range keepNamed {
		if end.chunks[dg] == "" {
			t.Errorf("chunk %s of the remaining checkpoint was collected", dg)
		}
	}
	d.ok("inspect", "--verify", keep[0].Path)
	restoreAt(keep[0], roundAtFresh)
}
