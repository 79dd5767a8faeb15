package criu

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cedana/cedana/internal/testenv"
)

// kdatTestDir returns a directory that plays /run: on a disk, not a tmpfs,
// so that CRIU does not cache by itself there. It ends the test (see
// testenv.Missing) without root or CRIU.
func kdatTestDir(t *testing.T) (*Client, string) {
	t.Helper()
	testenv.RequireRoot(t, "mount namespaces, tmpfs mounts, CRIU")
	c := New("")
	if _, err := c.Path(); err != nil {
		testenv.Missing(t, err.Error())
	}
	dir := t.TempDir()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type == unix.TMPFS_MAGIC {
		testenv.Missing(t, "the temp dir is a tmpfs, where CRIU caches by itself; set TMPDIR to a disk")
	}
	t.Cleanup(func() {
		if err := RemoveKdatCache(dir); err != nil {
			t.Error(err)
		}
	})
	return c, dir
}

// criuWithRunDir runs `criu check --feature mnt_id` with dir mounted over
// /run in a private mount namespace, as if dir were the host's /run, and
// returns CRIU's log and the run's wall time.
func criuWithRunDir(t *testing.T, c *Client, dir string) (string, time.Duration) {
	t.Helper()
	p, err := c.Path()
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "check.log")
	var took time.Duration
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace
		done <- inPrivateMountNS(func() error {
			if err := unix.Mount(dir, KdatRunDir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				return err
			}
			t0 := time.Now()
			out, err := exec.Command(p, "check", "--feature", "mnt_id", "-v4", "-o", logPath).CombinedOutput()
			took = time.Since(t0)
			if err != nil {
				t.Logf("criu check: %v: %s", err, out)
			}
			return nil
		})
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), took
}

const kdatLoaded = "Loaded kdat cache from /run/criu.kdat"

func TestKdatCacheBuiltAndLoaded(t *testing.T) {
	c, dir := kdatTestDir(t)
	ctx := context.Background()
	guard := filepath.Join(dir, "criu.kdat.tmp")
	log, cold := criuWithRunDir(t, c, dir)
	if strings.Contains(log, kdatLoaded) || !strings.Contains(log, "/run/criu.kdat does not exist") {
		t.Fatalf("before the cache exists CRIU should probe; its log:\n%s", kdatHead(log))
	}

	st, err := c.EnsureKdatCache(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	// The CRIU run above left its criu.kdat.tmp: the guard was there.
	if st.Action != "built" || st.Reason != "no cache" || st.GuardCreated {
		t.Fatalf("status %+v, want built because there was no cache, guard kept", st)
	}
	if fi, err := os.Lstat(guard); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("the guard criu.kdat.tmp is not there: %v", err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(filepath.Join(dir, kdatMountName), &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		t.Fatalf("the cache is not on a tmpfs: %v, type %#x", err, fs.Type)
	}

	log, warm := criuWithRunDir(t, c, dir)
	if !strings.Contains(log, kdatLoaded) {
		t.Fatalf("CRIU did not load the cache; its log:\n%s", kdatHead(log))
	}
	t.Logf("criu check --feature mnt_id: %v without the cache, %v with it; cache made in %v", cold, warm, st.ProbeTime)

	st, err = c.EnsureKdatCache(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Action != "fresh" {
		t.Fatalf("second call: %+v, want fresh", st)
	}
}

// TestKdatCacheRebuiltWhenStale injects each change that makes a cache
// stale and checks that the next EnsureKdatCache notices and rebuilds it.
func TestKdatCacheRebuiltWhenStale(t *testing.T) {
	c, dir := kdatTestDir(t)
	ctx := context.Background()
	mdir := filepath.Join(dir, kdatMountName)
	editRecord := func(f func(*kdatID)) func(*testing.T) {
		return func(t *testing.T) {
			p := filepath.Join(mdir, kdatIDName)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			var id kdatID
			if err := json.Unmarshal(b, &id); err != nil {
				t.Fatal(err)
			}
			f(&id)
			if b, err = json.Marshal(id); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	cases := []struct {
		name, reason string
		inject       func(*testing.T)
	}{
		{"other boot", "boot id changed", editRecord(func(id *kdatID) { id.BootID = "00000000-0000-0000-0000-000000000000" })},
		{"other kernel", "kernel changed", editRecord(func(id *kdatID) { id.Kernel = "5.10.0-old #1 SMP" })},
		{"other criu binary", "CRIU binary changed", editRecord(func(id *kdatID) { id.CRIUSHA256 = strings.Repeat("0", 64) })},
		{"other criu version", "CRIU binary changed", editRecord(func(id *kdatID) { id.CRIUVersion = "Version: 4.1.1" })},
		{"sysctl changed", "fs.nr_open or vm.mmap_min_addr changed", editRecord(func(id *kdatID) { id.NrOpen = "1024" })},
		{"cache edited", "the cache file changed", func(t *testing.T) {
			p := filepath.Join(mdir, kdatName)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)-1] ^= 0xff
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"a plain file instead of the link", "not Cedana's symlink", func(t *testing.T) {
			l := filepath.Join(dir, kdatName)
			b, err := os.ReadFile(l)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(l); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(l, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"reboot, Cedana first: the tmpfs is gone", "tmpfs is not mounted", func(t *testing.T) {
			if err := unix.Unmount(mdir, unix.MNT_DETACH); err != nil {
				t.Fatal(err)
			}
		}},
		{"reboot, another CRIU first: it probes and saves nothing", "tmpfs is not mounted", func(t *testing.T) {
			if err := unix.Unmount(mdir, unix.MNT_DETACH); err != nil {
				t.Fatal(err)
			}
			// Any CRIU started now must probe, not load a previous
			// boot's cache; the guard keeps it from saving or unlinking.
			log, _ := criuWithRunDir(t, c, dir)
			if strings.Contains(log, kdatLoaded) || !strings.Contains(log, "/run/criu.kdat does not exist") {
				t.Fatalf("CRIU should have probed after the cache's tmpfs went away:\n%s", kdatHead(log))
			}
			if _, err := os.Lstat(filepath.Join(dir, kdatName)); err != nil {
				t.Errorf("CRIU removed criu.kdat despite the guard: %v", err)
			}
		}},
		{"guard removed, then a CRIU probes", "no cache", func(t *testing.T) {
			// Without the guard, a CRIU that probes (here: the cache's
			// tmpfs is gone) unlinks criu.kdat when it fails to save on
			// a non-tmpfs: what a concurrent CRIU does to a fresh cache.
			if err := os.Remove(filepath.Join(dir, "criu.kdat.tmp")); err != nil {
				t.Fatal(err)
			}
			if err := unix.Unmount(mdir, unix.MNT_DETACH); err != nil {
				t.Fatal(err)
			}
			criuWithRunDir(t, c, dir)
			if _, err := os.Lstat(filepath.Join(dir, kdatName)); !os.IsNotExist(err) {
				t.Errorf("without the guard CRIU should unlink criu.kdat (CRIU changed? then the guard may be moot): %v", err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if st, err := c.EnsureKdatCache(ctx, dir); err != nil || (st.Action != "built" && st.Action != "fresh") {
				t.Fatalf("setup: %+v, %v", st, err)
			}
			tc.inject(t)
			st, err := c.EnsureKdatCache(ctx, dir)
			if err != nil {
				t.Fatal(err)
			}
			if st.Action != "built" || !strings.Contains(st.Reason, tc.reason) {
				t.Fatalf("after injecting %q: %+v, want rebuilt because %q", tc.name, st, tc.reason)
			}
			if st, err := c.EnsureKdatCache(ctx, dir); err != nil || st.Action != "fresh" {
				t.Fatalf("after the rebuild: %+v, %v, want fresh", st, err)
			}
			if _, err := os.Lstat(filepath.Join(dir, "criu.kdat.tmp")); err != nil {
				t.Fatalf("no guard after the rebuild: %v", err)
			}
			if log, _ := criuWithRunDir(t, c, dir); !strings.Contains(log, kdatLoaded) {
				t.Fatalf("CRIU did not load the rebuilt cache:\n%s", kdatHead(log))
			}
		})
	}
}

// TestKdatCacheLeavesTmpfsAlone: on a tmpfs, CRIU caches by itself and
// Cedana does nothing.
func TestKdatCacheLeavesTmpfsAlone(t *testing.T) {
	var fs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		testenv.Missing(t, "no tmpfs at /dev/shm")
	}
	st, err := New("").EnsureKdatCache(context.Background(), "/dev/shm")
	if err != nil || st.Action != "criu-managed" {
		t.Fatalf("%+v, %v; want criu-managed", st, err)
	}
}

func kdatHead(log string) string {
	lines := strings.SplitN(log, "\n", 12)
	if len(lines) > 11 {
		lines = lines[:11]
	}
	return strings.Join(lines, "\n")
}
