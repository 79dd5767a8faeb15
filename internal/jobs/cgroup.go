package jobs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Each job cedana starts runs in a cgroup of its own in the cgroup v2
// hierarchy, <mount>/cedana/<job ID>, so that all its processes — also
// those that left its process tree or outlived its main process — can be
// counted (cgroup.procs) and ended at once (cgroup.kill) instead of
// walking /proc. No controller is needed for that, so a hybrid machine
// (cgroup v1 controllers with a v2 hierarchy at /sys/fs/cgroup/unified)
// works as well as a pure v2 one.
//
// CRIU records the cgroup of every task and, with its default
// --manage-cgroups=soft, puts restored tasks back into the same path,
// creating it when it was removed (on another node too). The manager
// moves a restored tree into the job's cgroup as well, for archives made
// before the job had one.
//
// Where no cgroup v2 hierarchy is mounted (or it cannot be written), jobs
// run without one and the manager falls back to /proc: the job's process
// tree and, for jobs it started with their own session, the processes of
// that session.

// cgroupParent is the cgroup under which job cgroups are created, unless
// Config.CgroupParent says otherwise (in cluster mode each node has its
// own, cedana/<node>, so that nodes sharing a machine never freeze or end
// each other's copies).
const cgroupParent = "cedana"

// cgroups manages job cgroups under one cgroup v2 mount.
type cgroups struct {
	mount  string // the cgroup2 mount point; "" when unavailable
	parent string // relative to mount
}

// findCgroups locates the cgroup v2 hierarchy and checks that a job
// cgroup can be made there. why says what is missing otherwise.
func findCgroups(parent string) (c cgroups, why string) {
	mount := cgroup2Mount()
	if mount == "" {
		return cgroups{}, "no cgroup v2 hierarchy is mounted"
	}
	if parent == "" {
		parent = cgroupParent
	}
	if err := os.MkdirAll(filepath.Join(mount, parent), 0o755); err != nil {
		return cgroups{}, fmt.Sprintf("cannot create %s: %v", filepath.Join(mount, parent), err)
	}
	return cgroups{mount: mount, parent: parent}, ""
}

// cgroup2Mount returns the mount point of the cgroup v2 hierarchy, from
// /proc/self/mountinfo.
func cgroup2Mount() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID parent major:minor root mountpoint options... - fstype source super
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fs := strings.Fields(post)
		f := strings.Fields(pre)
		if len(fs) > 0 && fs[0] == "cgroup2" && len(f) >= 5 && f[3] == "/" {
			return f[4]
		}
	}
	return ""
}

// available reports whether job cgroups can be used.
func (c cgroups) available() bool { return c.mount != "" }

// name is the cgroup of job id, relative to the hierarchy's root.
func (c cgroups) name(jobID string) string { return c.parent + "/" + jobID }

// dir is the directory of a job cgroup.
func (c cgroups) dir(rel string) string { return filepath.Join(c.mount, rel) }

// create makes a job's cgroup (it may exist already) and opens it, for
// starting a process directly inside it (CLONE_INTO_CGROUP).
func (c cgroups) create(rel string) (*os.File, error) {
	if !c.available() || rel == "" {
		return nil, errors.New("cgroups are not available")
	}
	d := c.dir(rel)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", d, err)
	}
	return os.Open(d)
}

// procs lists the processes in a job's cgroup. A missing cgroup has none.
func (c cgroups) procs(rel string) ([]int, error) {
	if !c.available() || rel == "" {
		return nil, errors.New("cgroups are not available")
	}
	data, err := os.ReadFile(filepath.Join(c.dir(rel), "cgroup.procs"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read cgroup %s: %w", rel, err)
	}
	var out []int
	for _, l := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(l); err == nil {
			out = append(out, pid)
		}
	}
	return out, nil
}

// enter moves processes into a job's cgroup (creating it if needed).
func (c cgroups) enter(rel string, pids ...int) error {
	f, err := c.create(rel)
	if err != nil {
		return err
	}
	f.Close()
	p := filepath.Join(c.dir(rel), "cgroup.procs")
	for _, pid := range pids {
		if err := os.WriteFile(p, []byte(strconv.Itoa(pid)), 0); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("move PID %d into cgroup %s: %w", pid, rel, err)
		}
	}
	return nil
}

// kill ends every process in a job's cgroup — cgroup.kill where the kernel
// has it (5.14), SIGKILL to each listed process otherwise — and waits up
// to wait for the cgroup to empty. It returns how many processes it found.
func (c cgroups) kill(rel string, wait time.Duration) (int, error) {
	pids, err := c.procs(rel)
	if err != nil || len(pids) == 0 {
		return 0, err
	}
	if werr := os.WriteFile(filepath.Join(c.dir(rel), "cgroup.kill"), []byte("1"), 0); werr != nil {
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}
	for deadline := time.Now().Add(wait); ; {
		left, err := c.procs(rel)
		if err != nil || len(left) == 0 {
			return len(pids), err
		}
		if time.Now().After(deadline) {
			return len(pids), fmt.Errorf("cgroup %s still holds %d process(es) after SIGKILL", rel, len(left))
		}
		for _, p := range left { // new ones forked meanwhile (no cgroup.kill)
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// remove deletes an empty job cgroup; a missing one is not an error.
func (c cgroups) remove(rel string) error {
	if !c.available() || rel == "" {
		return nil
	}
	if err := os.Remove(c.dir(rel)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove cgroup %s: %w", rel, err)
	}
	return nil
}
