package integration

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// memCounterScript is a Python process holding mib MiB of memory (half
// random, half text: raw and compressed frames in the archive) whose
// counter file says both how far it counted and a digest of that memory,
// so a restore proves the memory came back intact, not just the loop.
func memCounterScript(path string, mib int) string {
	return fmt.Sprintf(`
import hashlib, os, time
half = %[2]d << 19
buf = bytearray(os.urandom(half)) + bytearray(b"step=1 loss=0.25 the quick brown fox\n" * (half // 37 + 1))[:half]
digest = hashlib.sha256(buf).hexdigest()[:16]
log = open(%[1]q + ".log", "w")  # open for writing: carried in the archive
log.write("started\n"); log.flush()
i = 0
while True:
    with open(%[1]q + ".tmp", "w") as f:
        f.write("%%d %%s" %% (i, hashlib.sha256(buf).hexdigest()[:16] if i %% 20 == 0 else digest))
    os.replace(%[1]q + ".tmp", %[1]q)
    i += 1
    time.sleep(0.05)
`, path, mib)
}

// readMemCounter returns the counter and the memory digest it reported.
func readMemCounter(path string) (int, string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return -1, ""
	}
	var n int
	var d string
	if _, err := fmt.Sscanf(string(data), "%d %s", &n, &d); err != nil {
		return -1, ""
	}
	return n, d
}

// checkMemContinues waits until the counter passes from+25 (so that the
// process has re-hashed its whole memory since the restore) and checks
// that the memory digest is the one from before.
func checkMemContinues(t *testing.T, path string, from int, digest string) {
	t.Helper()
	eventually(t, 20*time.Second, "the restored counter to move on", func() bool {
		n, d := readMemCounter(path)
		if n >= 0 && n < from {
			t.Fatalf("counter went back to %d (was %d): state was lost", n, from)
		}
		if n > from+25 && d != digest {
			t.Fatalf("memory digest %s after restore, %s before: memory damaged", d, digest)
		}
		return n > from+25
	})
}

// TestStreamOnAndOff: archives written with streaming on restore with it
// off, and the other way round; memory content survives both ways.
func TestStreamOnAndOff(t *testing.T) {
	requireCRIU(t)
	for _, tc := range []struct{ name, dumpStream, restoreStream string }{
		{"streamed dump, staged restore", "true", "false"},
		{"staged dump, streamed restore", "false", "true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			ctr := filepath.Join(t.TempDir(), "counter")
			p := start(t, "python3", "-c", memCounterScript(ctr, 80))
			eventually(t, 10*time.Second, "counter to reach 3", func() bool { n, _ := readMemCounter(ctr); return n >= 3 })
			r := e.cedanaWith([]string{"CEDANA_CRIU_STREAM=" + tc.dumpStream}, "client", "dump", "-p", itoa(p.pid()), "-d", e.dir)
			if r.code != 0 {
				t.Fatalf("dump: %s", r)
			}
			p.waitExit(t, 5*time.Second)
			before, digest := readMemCounter(ctr)
			r = e.cedanaWith([]string{"CEDANA_CRIU_STREAM=" + tc.restoreStream}, "client", "restore", r.stdout)
			if r.code != 0 {
				t.Fatalf("restore: %s", r)
			}
			pid := 0
			fmt.Sscan(r.stdout, &pid)
			killTreeAtEnd(t, pid)
			checkMemContinues(t, ctr, before, digest)
		})
	}
}

// TestStreamedRestoreRefusesDamagedPages: the memory pages stream from the
// archive into CRIU while they are verified; a damaged pages entry must
// still be refused with nothing left running, wherever the damage is.
func TestStreamedRestoreRefusesDamagedPages(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	ctr := filepath.Join(t.TempDir(), "counter")
	p := start(t, "python3", "-c", memCounterScript(ctr, 96))
	eventually(t, 10*time.Second, "counter to reach 3", func() bool { n, _ := readMemCounter(ctr); return n >= 3 })
	good := e.dump(p.pid())
	p.waitExit(t, 5*time.Second)
	before, digest := readMemCounter(ctr)
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	// The log the process had open travels in the archive; remove it so
	// that a restore would have to write it back to the host.
	logFile := ctr + ".log"
	if err := os.Remove(logFile); err != nil {
		t.Fatal(err)
	}

	off, size := largestEntry(t, data, "images/pages-")
	if size < 8<<20 {
		t.Fatalf("no multi-frame pages entry in the archive")
	}
	for name, at := range map[string]int64{
		"first frame": off + 100,
		"middle":      off + size/2,
		"last frame":  off + size - 100,
	} {
		t.Run(name, func(t *testing.T) {
			bad := append([]byte(nil), data...)
			bad[at] ^= 0x01
			path := filepath.Join(t.TempDir(), "damaged.zip")
			if err := os.WriteFile(path, bad, 0o600); err != nil {
				t.Fatal(err)
			}
			r := e.cedana("client", "restore", path)
			if r.code != 4 {
				t.Fatalf("want exit 4 (archive refused), got %s", r)
			}
			if !strings.Contains(r.stderr, "nothing was restored") {
				t.Errorf("the error does not say nothing was restored:\n%s", r.stderr)
			}
			time.Sleep(300 * time.Millisecond)
			if alive(p.pid()) {
				t.Fatalf("PID %d runs after a refused restore", p.pid())
			}
			if n, _ := readMemCounter(ctr); n != before {
				t.Fatalf("the counter moved (%d → %d): something ran from a damaged archive", before, n)
			}
			if _, err := os.Stat(logFile); err == nil {
				t.Fatalf("a carried file was written to the host from a damaged archive")
			}
		})
	}
	// The intact archive was never touched and still restores.
	if now, err := os.ReadFile(good); err != nil || sha256.Sum256(now) != sum {
		t.Fatalf("the archive changed (%v)", err)
	}
	e.restore(good)
	checkMemContinues(t, ctr, before, digest)
	if _, err := os.Stat(logFile); err != nil {
		t.Errorf("the carried log was not put back: %v", err)
	}
}

// TestStreamedProcessTree: a parent and two children, each with its own
// memory (so its own pages image, which CRIU reads in parallel on
// restore), dumped and restored through the streamed path; every
// process's memory and counter survive.
func TestStreamedProcessTree(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	dir := t.TempDir()
	script := fmt.Sprintf(`
import os, sys
for n in range(2):
    if os.fork() == 0:
        sys.argv = ["x", %[1]q + "/c%%d" %% n]
        break
else:
    sys.argv = ["x", %[1]q + "/parent"]
`, dir) + memCounterScript("PATH", 40)
	script = strings.Replace(script, `"PATH"`, "sys.argv[1]", -1)
	p := start(t, "python3", "-c", script)
	files := []string{filepath.Join(dir, "parent"), filepath.Join(dir, "c0"), filepath.Join(dir, "c1")}
	eventually(t, 15*time.Second, "three counters to reach 3", func() bool {
		for _, f := range files {
			if n, _ := readMemCounter(f); n < 3 {
				return false
			}
		}
		return true
	})
	var out struct {
		Path    string `json:"path"`
		Options struct {
			Streamable bool `json:"streamable"`
		} `json:"options"`
	}
	e.dumpJSON(p.pid(), &out)
	if !out.Options.Streamable {
		t.Fatalf("a tree of 3 × 40 MiB was not streamable")
	}
	p.waitExit(t, 5*time.Second)
	before := make([]int, len(files))
	digests := make([]string, len(files))
	for i, f := range files {
		before[i], digests[i] = readMemCounter(f)
	}
	e.restore(out.Path)
	for i, f := range files {
		checkMemContinues(t, f, before[i], digests[i])
	}
}
