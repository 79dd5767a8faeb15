package integration

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Deduplicated periodic checkpoints (internal/chunks, docs/periodic.md).

// touchScript is a Python job holding 512 MiB of random memory that
// rewrites a contiguous 1 % of it in place every 2 s and counts its rounds
// into path.
func touchScript(path string) string {
	return fmt.Sprintf(`
import os, time
N = 512 << 20
mem = bytearray(N)
view = memoryview(mem)
rnd = open("/dev/urandom", "rb", buffering=0)
def fill(off, n):
    # readinto writes the memory in place: no temporary copy.
    while n > 0:
        k = rnd.readinto(view[off:off + min(n, 1 << 24)])
        off, n = off + k, n - k
fill(0, N)
step = N // 100
i = 0
while True:
    fill((i * 37 * 4096 * 1024) %% (N - step), step)
    i += 1
    with open(%[1]q + ".tmp", "w") as f:
        f.write(str(i))
    os.replace(%[1]q + ".tmp", %[1]q)
    time.sleep(2)
`, path)
}

// dirBytes sums the sizes of the regular files under dir.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.Type().IsRegular() {
			info, err := e.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// checkpointChunks reads the chunk digests a deduplicated checkpoint
// object names (its trailer: manifest, length, magic).
func checkpointChunks(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !chunksTrailer(data) {
		t.Fatalf("%s is not a deduplicated checkpoint", path)
	}
	n := binary.LittleEndian.Uint64(data[len(data)-16:])
	var m struct {
		Chunks []struct {
			Digest string `json:"sha256"`
		} `json:"chunks"`
	}
	if err := json.Unmarshal(data[len(data)-16-int(n):len(data)-16], &m); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range m.Chunks {
		out = append(out, c.Digest)
	}
	return out
}

// chunksTrailer reports whether data ends like a deduplicated checkpoint.
func chunksTrailer(data []byte) bool {
	return len(data) >= 16 && string(data[len(data)-8:]) == "CEDCHNK1"
}

// TestDaemonPeriodicDedup: a job of 512 MiB that rewrites 1 % of its
// memory per interval, checkpointed every 2 s for a minute, stores about
// what it rewrote per checkpoint, not 512 MiB; an idle job is checkpointed
// once and then skipped. Checkpoints deleted in random order leave every
// remaining one whole (verified entry by entry, and restored with its
// state), and a chunk corrupted on disk fails the restore with an error
// naming the chunk, before the job runs.
func TestDaemonPeriodicDedup(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	counter := filepath.Join(t.TempDir(), "rounds")
	policy := []string{"--checkpoint-every", "2s", "--keep", "1000"}
	busy := d.runJob("touch", nil, "python3", "-c", touchScript(counter))
	d.runJob("idle", policy, "sleep", "3600")
	eventually(t, 60*time.Second, "the job to fill its memory", func() bool { return readCounter(counter) >= 1 })
	d.ok(append([]string{"policy", "touch"}, policy...)...)
	time.Sleep(60 * time.Second)
	for _, j := range []string{"touch", "idle"} {
		d.ok("policy", j, "--checkpoint-every", "1h")
	}
	d.waitJob("touch", time.Minute, "the last checkpoint to end", func(j jobInfo) bool { return j.State == "running" })

	if n := len(complete(d.checkpoints("idle"))); n != 1 {
		t.Errorf("idle job: %d checkpoints, want 1 (then skipped)", n)
	}
	if !hasEvent(d.events("idle"), "unchanged") {
		t.Error("idle job: no unchanged event")
	}

	cks := complete(d.checkpoints("touch")) // newest first
	if len(cks) < 5 {
		t.Fatalf("%d checkpoints in a minute, want at least 5", len(cks))
	}
	// What each checkpoint stored, from its event ("stored N new bytes").
	storedRE := regexp.MustCompile(`stored (\d+) new bytes`)
	var stored []int64
	for _, e := range d.events("touch") {
		if m := storedRE.FindStringSubmatch(e.Message); e.Type == "checkpointed" && m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			stored = append(stored, n)
		}
	}
	if len(stored) != len(cks) {
		t.Fatalf("%d checkpoints, %d checkpointed events saying what they stored", len(cks), len(stored))
	}
	var later int64
	for _, n := range stored[1:] {
		later += n
	}
	perCheckpoint := float64(later) / float64(len(stored)-1)
	t.Logf("%d checkpoints: the first stored %d MiB, the others %.1f MiB each on average (%.2f %% of 512 MiB); %d MiB on disk",
		len(cks), stored[0]>>20, perCheckpoint/(1<<20), 100*perCheckpoint/(512<<20), dirBytes(t, filepath.Join(d.ckptDir, busy.ID))>>20)
	if perCheckpoint > 0.05*(512<<20) {
		t.Errorf("each checkpoint after the first stored %.1f MiB on average (%v), want at most 5 %% of 512 MiB", perCheckpoint/(1<<20), stored)
	}
	// The events tell the truth: the disk holds what they say, plus at
	// most the chunks of a checkpoint cancelled by the policy change.
	if disk := dirBytes(t, filepath.Join(d.ckptDir, busy.ID)); disk > stored[0]+later+(40<<20) {
		t.Fatalf("%d bytes on disk, more than the %d the checkpoints say they stored", disk, stored[0]+later)
	}

	// Delete all but three in random order; after each deletion the
	// remaining ones read back whole (inspect --verify checks every chunk
	// and every entry).
	d.ok("kill", "touch")
	waitGone(t, busy.PID, 30*time.Second)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 15))
	order := rng.Perm(len(cks))
	keep := map[int]bool{order[0]: true, order[1]: true, order[2]: true}
	for _, i := range order[3:] {
		d.ok("checkpoint", "rm", cks[i].ID)
		for k := range keep {
			if rng.IntN(3) == 0 || i == order[len(order)-1] {
				d.ok("inspect", "--verify", cks[k].Path)
			}
		}
	}
	var kept []ckptInfo
	for i, c := range cks {
		if keep[i] {
			kept = append(kept, c) // newest first
		}
	}
	for _, c := range kept {
		d.ok("inspect", "--verify", c.Path)
	}
	// Export makes an ordinary archive of one, verified; never over a file.
	zip := filepath.Join(t.TempDir(), "exported.zip")
	d.ok("checkpoint", "export", kept[len(kept)-1].ID, zip)
	if head, err := os.ReadFile(zip); err != nil || !strings.HasPrefix(string(head), "PK\x03\x04") || chunksTrailer(head) {
		t.Fatalf("exported %s is not a self-contained zip archive (%v)", zip, err)
	}
	d.ok("inspect", "--verify", zip)
	if r := d.cli("checkpoint", "export", kept[0].ID, zip); r.code == 0 {
		t.Fatal("export replaced an existing file")
	}

	// The oldest and the newest kept restore with their state.
	for _, c := range []ckptInfo{kept[len(kept)-1], kept[0]} {
		os.Remove(counter)
		j := d.restoreJob("touch", "--checkpoint", c.ID)
		eventually(t, 30*time.Second, "the restored job to count", func() bool { return readCounter(counter) >= 2 })
		d.ok("kill", "touch")
		waitGone(t, j.PID, 30*time.Second)
	}

	// A corrupt chunk is found before anything runs.
	newest := kept[0]
	digests := checkpointChunks(t, newest.Path)
	victim := digests[len(digests)/2]
	chunk := filepath.Join(filepath.Dir(newest.Path), "chunks", "sha256", victim[:2], victim)
	f, err := os.OpenFile(chunk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	f.ReadAt(b, 4096)
	b[0] ^= 0x55
	f.WriteAt(b, 4096)
	f.Close()
	r := d.cli("restore", "job", "touch", "--checkpoint", newest.ID)
	if r.code == 0 {
		d.track(d.job("touch").PID)
		t.Fatal("restore from a checkpoint with a corrupt chunk succeeded")
	}
	if !strings.Contains(r.stderr, victim) || !strings.Contains(r.stderr, "corrupt") {
		t.Fatalf("restore error does not name the corrupt chunk %s:\n%s", victim, r.stderr)
	}

	// Removing the job with its checkpoints leaves nothing of them.
	d.ok("rm", "-f", "--checkpoints", "touch")
	if _, err := os.Stat(filepath.Join(d.ckptDir, busy.ID)); !os.IsNotExist(err) {
		left := dirBytes(t, filepath.Join(d.ckptDir, busy.ID))
		t.Fatalf("job removed with its checkpoints, but its directory remains (%d bytes): %v", left, err)
	}
}
