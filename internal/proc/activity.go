package proc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Thread is what the kernel says about one thread's activity: enough to
// tell whether it ran, or was sent a signal, since an earlier reading.
type Thread struct {
	TID int
	// RunNS is the CPU time the thread has used, in nanoseconds (the first
	// field of /proc/PID/task/TID/schedstat): unlike utime and stime,
	// which count whole clock ticks, it grows with every run, however
	// short.
	RunNS uint64
	// SigPnd and ShdPnd are the thread's and its process's pending
	// signals (blocked signals stay pending without waking anybody).
	SigPnd, ShdPnd uint64
	// State is the thread's state letter (R running or runnable, S, D,
	// T, t, Z…), from its status file.
	State byte
}

// Threads reads the activity of every thread of pid, sorted by TID.
func Threads(pid int) ([]Thread, error) {
	dir := filepath.Join(Root, strconv.Itoa(pid), "task")
	names, err := readDirNames(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: PID %d: %v", ErrNoProcess, pid, err)
	}
	out := make([]Thread, 0, len(names))
	for _, name := range names {
		tid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		t := Thread{TID: tid}
		sched, err := readFile(filepath.Join(dir, name, "schedstat"))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // the thread exited meanwhile
			}
			return nil, fmt.Errorf("read CPU time of thread %d of PID %d: %w", tid, pid, err)
		}
		if t.RunNS, err = parseSchedstat(sched); err != nil {
			return nil, fmt.Errorf("thread %d of PID %d: %w", tid, pid, err)
		}
		status, err := readFile(filepath.Join(dir, name, "status"))
		if err != nil {
			continue
		}
		t.SigPnd, t.ShdPnd, t.State = parsePending(status)
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b Thread) int { return a.TID - b.TID })
	return out, nil
}

// parseSchedstat returns the first field of a schedstat line: time spent
// on the CPU, in nanoseconds.
func parseSchedstat(b []byte) (uint64, error) {
	f, _, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	n, err := strconv.ParseUint(f, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("malformed schedstat %q", b)
	}
	return n, nil
}

// parsePending reads SigPnd, ShdPnd and the state from a status file.
func parsePending(status []byte) (sig, shd uint64, state byte) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch k {
		case "SigPnd":
			sig, _ = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		case "ShdPnd":
			shd, _ = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		case "State":
			if v = strings.TrimSpace(v); v != "" {
				state = v[0]
			}
		}
	}
	return sig, shd, state
}

// CgroupCPU returns the CPU time used by every process that was ever in a
// cgroup v2 directory (cpu.stat's usage_usec, in microseconds): also those
// that exited or left the process tree.
func CgroupCPU(dir string) (uint64, error) {
	data, err := readFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no usage_usec in %s/cpu.stat", dir)
}

// MapsLine is one line of /proc/PID/maps, split into the fields a
// fingerprint and the question "can somebody else write this?" need.
type MapsLine struct {
	Perms string // e.g. "rw-s"
	Path  string // "" for anonymous memory
}

// Shared reports whether the mapping is shared and writable: another
// process, or a write to the file, can change it without this process
// running.
func (l MapsLine) Shared() bool {
	return len(l.Perms) == 4 && l.Perms[1] == 'w' && l.Perms[3] == 's'
}

// Maps returns pid's /proc/PID/maps as it is, for fingerprinting, and its
// lines parsed.
func Maps(pid int) ([]byte, []MapsLine, error) {
	data, err := readFile(filepath.Join(Root, strconv.Itoa(pid), "maps"))
	if err != nil {
		return nil, nil, fmt.Errorf("read the mappings of PID %d: %w", pid, err)
	}
	var out []MapsLine
	for _, line := range strings.Split(string(data), "\n") {
		rest := line
		var f [5]string
		ok := true
		for i := range f {
			rest = strings.TrimLeft(rest, " ")
			j := strings.IndexByte(rest, ' ')
			if j < 0 {
				if i == 4 && rest != "" { // no path
					f[i], rest = rest, ""
					break
				}
				ok = false
				break
			}
			f[i], rest = rest[:j], rest[j:]
		}
		if !ok {
			continue
		}
		out = append(out, MapsLine{Perms: f[1], Path: strings.TrimLeft(rest, " ")})
	}
	return data, out, nil
}
