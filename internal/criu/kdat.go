package criu

// CRIU's kernel-feature cache (criu.kdat) on hosts whose /run is not a tmpfs.
//
// Every CRIU process probes the kernel before it does anything ("kerndat":
// 0.1–0.3 s on an idle 2-core VM, seconds under load). CRIU keeps the result in
// KDAT_RUNDIR/criu.kdat (/run/criu.kdat for root; a build-time constant) and
// loads it on its next start, but it only writes that file when the
// directory is a tmpfs, so that a reboot, which may change the kernel, wipes
// it. CRIU 4.2 checks on load only the file's size and two magic numbers (a
// constant and the CRIU build's SOURCE_DATE_EPOCH); nothing about the kernel
// or the boot. On a host whose /run is a plain disk (ext4 on these VMs) no run
// is ever cached, and every failed save leaves /run/criu.kdat.tmp behind.
//
// EnsureKdatCache produces the cache CRIU would have written on a tmpfs host
// and installs it where CRIU looks, keeping the rule that makes it safe:
//
//   - It is made by CRIU itself: `criu check` runs in a private mount
//     namespace with a fresh tmpfs over /run, and the criu.kdat it saves there
//     is read back. The host's mounts are not touched by that run.
//   - It lives on a tmpfs that Cedana mounts (DIR/cedana-kdat, mode 0700,
//     root only), and DIR/criu.kdat is a relative symlink to it. After a
//     reboot the mount is gone, the symlink dangles, CRIU probes again and
//     removes the dangling link: no CRIU, Cedana's or anyone's, can load a
//     cache from an earlier boot.
//   - DIR/criu.kdat.tmp, the empty file a CRIU leaves when it fails to
//     save on a non-tmpfs, is kept (created if missing) as a guard: CRIU
//     opens it with O_EXCL before saving, and when that fails it gives up
//     quietly; when it succeeds on a non-tmpfs it unlinks criu.kdat. Without
//     the guard, a CRIU that started probing before the cache was installed
//     deletes it when it finishes (seen while benchmarking on a shared
//     machine).
//   - Next to it, criu.kdat.id records what the cache is valid for: the boot
//     id, the kernel (uname -r and -v), the CRIU binary (path, SHA-256, its
//     --version output), the two sysctls CRIU caches (fs.nr_open,
//     vm.mmap_min_addr) and the cache's own SHA-256. When any differs, the
//     cache is removed and made again.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// KdatRunDir is the directory a root CRIU reads its kernel-feature cache
	// from (CRIU's KDAT_RUNDIR, /run in Debian's and upstream's builds).
	KdatRunDir = "/run"
	// kdatName is the cache's file name inside KdatRunDir.
	kdatName = "criu.kdat"
	// kdatMountName is the tmpfs Cedana mounts inside the run dir to hold
	// the cache, so that it disappears with a reboot.
	kdatMountName = "cedana-kdat"
	// kdatIDName is the record of what the cache is valid for.
	kdatIDName = "criu.kdat.id"
	// kdatMagic is CRIU's KDAT_MAGIC, the first 4 bytes of every criu.kdat.
	kdatMagic = 0x57023458
)

// KdatStatus says what EnsureKdatCache found and did.
type KdatStatus struct {
	// Dir is the directory CRIU reads criu.kdat from.
	Dir string `json:"dir"`
	// Action is "fresh" (a valid cache was there), "built" (made now),
	// "criu-managed" (Dir is a tmpfs: CRIU caches by itself) or "off".
	Action string `json:"action"`
	// Reason says why the cache was (re)built, e.g. "boot id changed".
	Reason string `json:"reason,omitempty"`
	// ProbeTime is how long the `criu check` that made the cache took.
	ProbeTime time.Duration `json:"probe_ns,omitempty"`
	// GuardCreated reports that criu.kdat.tmp had to be created: it keeps
	// CRIUs that probed from unlinking criu.kdat (see the file comment).
	GuardCreated bool `json:"guard_created,omitempty"`
}

// kdatID is what a cache is valid for; it is stored as JSON next to it.
type kdatID struct {
	BootID       string `json:"boot_id"`
	Kernel       string `json:"kernel"`
	CRIUPath     string `json:"criu_path"`
	CRIUSHA256   string `json:"criu_sha256"`
	CRIUVersion  string `json:"criu_version"`
	NrOpen       string `json:"nr_open"`
	MmapMinAddr  string `json:"mmap_min_addr"`
	KdatSHA256   string `json:"kdat_sha256"`
	CreatedUnixS int64  `json:"created_unix_s"`
}

// differs reports which part of the environment differs from the one the
// cache was made in, or "" when none does.
func (k kdatID) differs(now kdatID) string {
	switch {
	case k.BootID != now.BootID:
		return "boot id changed (the machine rebooted)"
	case k.Kernel != now.Kernel:
		return "kernel changed"
	case k.CRIUPath != now.CRIUPath || k.CRIUSHA256 != now.CRIUSHA256 || k.CRIUVersion != now.CRIUVersion:
		return "CRIU binary changed"
	case k.NrOpen != now.NrOpen || k.MmapMinAddr != now.MmapMinAddr:
		return "fs.nr_open or vm.mmap_min_addr changed"
	}
	return ""
}

// EnsureKdatCache makes sure that CRIU finds a valid kernel-feature cache in
// dir (KdatRunDir in production; tests pass a directory of their own): it
// keeps a valid one, rebuilds a missing or stale one, and keeps the guard
// criu.kdat.tmp in place. It needs root (mounts). On
// error the cache is left absent, never stale: CRIU then probes as before.
func (c *Client) EnsureKdatCache(ctx context.Context, dir string) (*KdatStatus, error) {
	st := &KdatStatus{Dir: dir}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return st, fmt.Errorf("kdat cache: %w", err)
	}
	if fs.Type == unix.TMPFS_MAGIC {
		st.Action = "criu-managed"
		return st, nil
	}
	// One Cedana at a time installs (daemons and tests start concurrently).
	lock, err := os.OpenFile(filepath.Join(dir, kdatMountName+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return st, fmt.Errorf("kdat cache: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return st, fmt.Errorf("kdat cache: lock: %w", err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN) //nolint:errcheck // closing unlocks too

	created, err := ensureKdatGuard(dir)
	if err != nil {
		return st, fmt.Errorf("kdat cache: %w", err)
	}
	st.GuardCreated = created
	now, err := c.kdatEnv(ctx)
	if err != nil {
		return st, fmt.Errorf("kdat cache: %w", err)
	}
	reason := kdatStale(dir, now)
	if reason == "" {
		st.Action = "fresh"
		return st, nil
	}
	st.Reason = reason
	// Whatever happens next, no stale cache may stay loadable.
	removeKdat(dir)

	p, err := c.Path()
	if err != nil {
		return st, err
	}
	t0 := time.Now()
	data, probeLog, err := probeKdat(ctx, p)
	st.ProbeTime = time.Since(t0)
	if err != nil {
		return st, fmt.Errorf("kdat cache: %w%s", err, kdatLogTail(probeLog))
	}
	if err := installKdat(dir, data, now); err != nil {
		removeKdat(dir)
		return st, fmt.Errorf("kdat cache: %w", err)
	}
	st.Action = "built"
	return st, nil
}

// kdatStale returns why the cache in dir cannot be used as it is, or "".
func kdatStale(dir string, now kdatID) string {
	link := filepath.Join(dir, kdatName)
	target, err := os.Readlink(link)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "no cache"
		}
		return "criu.kdat is not Cedana's symlink"
	}
	if target != filepath.Join(kdatMountName, kdatName) {
		return "criu.kdat points elsewhere"
	}
	mdir := filepath.Join(dir, kdatMountName)
	var fs unix.Statfs_t
	if err := unix.Statfs(mdir, &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		return "the cache's tmpfs is not mounted (the machine rebooted?)"
	}
	raw, err := os.ReadFile(filepath.Join(mdir, kdatIDName))
	if err != nil {
		return "no record of what the cache is valid for"
	}
	var rec kdatID
	if err := json.Unmarshal(raw, &rec); err != nil {
		return "unreadable record of what the cache is valid for"
	}
	if why := rec.differs(now); why != "" {
		return why
	}
	data, err := os.ReadFile(filepath.Join(mdir, kdatName))
	if err != nil {
		return "the cache file is missing"
	}
	if kdatSHA(data) != rec.KdatSHA256 {
		return "the cache file changed since it was made"
	}
	return ""
}

// kdatEnv describes the running kernel, boot and CRIU binary.
func (c *Client) kdatEnv(ctx context.Context) (kdatID, error) {
	var id kdatID
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return id, err
	}
	id.BootID = strings.TrimSpace(string(b))
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return id, fmt.Errorf("uname: %w", err)
	}
	id.Kernel = unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Version[:])
	p, err := c.Path()
	if err != nil {
		return id, err
	}
	if p, err = filepath.EvalSymlinks(p); err != nil {
		return id, err
	}
	id.CRIUPath = p
	bin, err := os.ReadFile(p)
	if err != nil {
		return id, err
	}
	id.CRIUSHA256 = kdatSHA(bin)
	// The binary on PATH may be a wrapper (it is here); --version names the
	// CRIU behind it. A rebuilt CRIU of the same version is caught by CRIU
	// itself: the cache's second magic is its build's SOURCE_DATE_EPOCH.
	out, err := exec.CommandContext(ctx, p, "--version").Output()
	if err != nil {
		return id, fmt.Errorf("criu --version: %w", err)
	}
	id.CRIUVersion = strings.TrimSpace(string(out))
	for _, s := range []struct {
		path string
		dst  *string
	}{{"/proc/sys/fs/nr_open", &id.NrOpen}, {"/proc/sys/vm/mmap_min_addr", &id.MmapMinAddr}} {
		if b, err := os.ReadFile(s.path); err == nil {
			*s.dst = strings.TrimSpace(string(b))
		}
	}
	return id, nil
}

// probeKdat runs `criu check` in a private mount namespace with a fresh
// tmpfs over KdatRunDir, where CRIU saves its cache, and returns that
// cache and CRIU's log. The namespace belongs to one OS thread, which is
// thrown away afterwards; the host's mounts never change.
func probeKdat(ctx context.Context, criuPath string) (data, log []byte, err error) {
	type result struct {
		data, log []byte
		err       error
	}
	ch := make(chan result, 1)
	go func() {
		// Never unlocked: a goroutine that exits locked takes its thread,
		// and the thread's private mount namespace, with it.
		runtime.LockOSThread()
		var r result
		r.err = inPrivateMountNS(func() error {
			if err := unix.Mount("cedana-kdat-probe", KdatRunDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=1m,mode=0700"); err != nil {
				return fmt.Errorf("mount a tmpfs over %s in a private namespace: %w", KdatRunDir, err)
			}
			logPath := filepath.Join(KdatRunDir, "check.log")
			cmd := exec.CommandContext(ctx, criuPath, "check", "-v4", "-o", logPath)
			out, cerr := cmd.CombinedOutput()
			r.log, _ = os.ReadFile(logPath)
			if len(r.log) == 0 {
				r.log = out
			}
			// CRIU saves the cache at the end of its probes, before the
			// checks; the file exists only if every probe succeeded.
			b, err := os.ReadFile(filepath.Join(KdatRunDir, kdatName))
			if err != nil {
				if cerr != nil {
					return fmt.Errorf("`criu check` failed (%v) and saved no cache", cerr)
				}
				return fmt.Errorf("`criu check` saved no cache: %w", err)
			}
			if len(b) < 8 || binary.NativeEndian.Uint32(b) != kdatMagic {
				return fmt.Errorf("`criu check` saved %d bytes that are not a kdat cache", len(b))
			}
			r.data = b
			return nil
		})
		ch <- r
	}()
	select {
	case r := <-ch:
		return r.data, r.log, r.err
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

// inPrivateMountNS moves the calling OS thread (which must be locked and
// must never be unlocked) into a new mount namespace whose mounts do not
// propagate to the host's, and runs fn there. Child processes started by
// fn inherit the namespace.
func inPrivateMountNS(fn func() error) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare a mount namespace (needs root): %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make the private namespace's mounts private: %w", err)
	}
	return fn()
}

// installKdat writes the cache and its record on a tmpfs mounted at
// DIR/cedana-kdat and points DIR/criu.kdat at it.
func installKdat(dir string, data []byte, id kdatID) error {
	mdir := filepath.Join(dir, kdatMountName)
	fi, err := os.Lstat(mdir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.Mkdir(mdir, 0o700); err != nil {
			return err
		}
	case err != nil:
		return err
	case !fi.IsDir():
		return fmt.Errorf("%s exists and is not a directory", mdir)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(mdir, &fs); err != nil {
		return err
	}
	if fs.Type != unix.TMPFS_MAGIC {
		if err := unix.Mount("cedana-kdat", mdir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=1m,mode=0700"); err != nil {
			return fmt.Errorf("mount a tmpfs on %s: %w", mdir, err)
		}
	}
	id.KdatSHA256 = kdatSHA(data)
	id.CreatedUnixS = time.Now().Unix()
	rec, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	if err := kdatWriteFile(filepath.Join(mdir, kdatName), data); err != nil {
		return err
	}
	if err := kdatWriteFile(filepath.Join(mdir, kdatIDName), append(rec, '\n')); err != nil {
		return err
	}
	tmp := filepath.Join(dir, kdatName+".cedana-link")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Join(kdatMountName, kdatName), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, kdatName)); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// removeKdat makes the cache in dir unloadable: the link CRIU follows (or a
// file someone put there) and the cache behind it go. The tmpfs stays
// mounted for the next install.
func removeKdat(dir string) {
	os.Remove(filepath.Join(dir, kdatName))
	mdir := filepath.Join(dir, kdatMountName)
	var fs unix.Statfs_t
	if unix.Statfs(mdir, &fs) == nil && fs.Type == unix.TMPFS_MAGIC {
		os.Remove(filepath.Join(mdir, kdatName))
		os.Remove(filepath.Join(mdir, kdatIDName))
	}
}

// ensureKdatGuard makes sure DIR/criu.kdat.tmp exists, so that no CRIU
// saves (and, failing on a non-tmpfs, unlinks criu.kdat). It reports
// whether it created the file. Something other than a regular file there
// is an error: CRIU would not be kept from unlinking.
func ensureKdatGuard(dir string) (bool, error) {
	p := filepath.Join(dir, kdatName+".tmp")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err == nil {
		return true, f.Close()
	}
	if !errors.Is(err, os.ErrExist) {
		return false, err
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() {
		return false, fmt.Errorf("%s is not a regular file", p)
	}
	return false, nil
}

// RemoveKdatCache removes Cedana's cache and guard from dir and unmounts
// its tmpfs (for tests, and for hosts where it is unwanted).
func RemoveKdatCache(dir string) error {
	removeKdat(dir)
	os.Remove(filepath.Join(dir, kdatName+".tmp"))
	mdir := filepath.Join(dir, kdatMountName)
	var fs unix.Statfs_t
	if unix.Statfs(mdir, &fs) == nil && fs.Type == unix.TMPFS_MAGIC {
		if err := unix.Unmount(mdir, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", mdir, err)
		}
	}
	os.Remove(mdir)
	return nil
}

func kdatWriteFile(path string, data []byte) error {
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func kdatSHA(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// kdatLogTail returns the last lines of a CRIU log that say what went wrong.
func kdatLogTail(log []byte) string {
	if len(log) == 0 {
		return ""
	}
	lines := bytes.Split(bytes.TrimSpace(log), []byte("\n"))
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return "\n" + string(bytes.Join(lines, []byte("\n")))
}
