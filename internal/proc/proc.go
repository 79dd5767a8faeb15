// Package proc reads what Cedana needs to know about a live process tree
// from /proc: the tree itself, identities, open files and sockets. Its
// results feed both the choice of CRIU options and the archive manifest.
package proc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNoProcess means no process has the given PID.
var ErrNoProcess = errors.New("no such process")

// Stat is the part of /proc/PID/stat that Cedana uses.
type Stat struct {
	PID       int
	Comm      string
	State     byte // R, S, D, Z, T, t, X, I
	PPID      int
	PGID      int
	SID       int
	TTYNr     int
	StartTime uint64 // clock ticks after boot: with PID, identifies a process
	RSSPages  int64
	UTime     uint64 // user CPU time, clock ticks
	STime     uint64 // system CPU time, clock ticks
}

// Root is the proc filesystem's mount point.
const Root = "/proc"

// ReadStat parses /proc/PID/stat.
func ReadStat(pid int) (*Stat, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("%w: PID %d", ErrNoProcess, pid)
	}
	data, err := readFile(filepath.Join(Root, strconv.Itoa(pid), "stat"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return nil, fmt.Errorf("%w: PID %d", ErrNoProcess, pid)
		}
		return nil, err
	}
	return parseStat(string(data))
}

func parseStat(s string) (*Stat, error) {
	// comm may contain spaces and parentheses: it ends at the last ')'.
	open := strings.IndexByte(s, '(')
	end := strings.LastIndexByte(s, ')')
	if open < 0 || end < open || end+2 > len(s) {
		return nil, fmt.Errorf("malformed stat line")
	}
	pid, err := strconv.Atoi(strings.TrimSpace(s[:open]))
	if err != nil {
		return nil, fmt.Errorf("malformed stat pid: %w", err)
	}
	f := strings.Fields(s[end+2:])
	// f[0] is field 3 (state); field N is f[N-3].
	if len(f) < 22 {
		return nil, fmt.Errorf("malformed stat: %d fields", len(f))
	}
	st := &Stat{PID: pid, Comm: s[open+1 : end], State: f[0][0]}
	ints := []*int{&st.PPID, &st.PGID, &st.SID, &st.TTYNr}
	for i, p := range ints {
		if *p, err = strconv.Atoi(f[1+i]); err != nil {
			return nil, fmt.Errorf("malformed stat field %d: %w", 4+i, err)
		}
	}
	if st.StartTime, err = strconv.ParseUint(f[19], 10, 64); err != nil {
		return nil, fmt.Errorf("malformed stat starttime: %w", err)
	}
	if st.RSSPages, err = strconv.ParseInt(f[21], 10, 64); err != nil {
		return nil, fmt.Errorf("malformed stat rss: %w", err)
	}
	st.UTime, _ = strconv.ParseUint(f[11], 10, 64)
	st.STime, _ = strconv.ParseUint(f[12], 10, 64)
	return st, nil
}

// Alive reports whether a process with this PID exists and is not a zombie.
func Alive(pid int) bool {
	st, err := ReadStat(pid)
	return err == nil && st.State != 'Z' && st.State != 'X'
}

// Exists reports whether the PID is taken, by a zombie or not.
func Exists(pid int) bool {
	_, err := os.Stat(filepath.Join(Root, strconv.Itoa(pid)))
	return err == nil
}

// Children returns the direct children of pid, from every thread.
func Children(pid int) ([]int, error) {
	dir := filepath.Join(Root, strconv.Itoa(pid), "task")
	tasks, err := readDirNames(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: PID %d", ErrNoProcess, pid)
	}
	var out []int
	for _, t := range tasks {
		data, err := readFile(filepath.Join(dir, t, "children"))
		if err != nil {
			continue // the thread exited meanwhile
		}
		for _, f := range strings.Fields(string(data)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// Tree returns pid and all its descendants, breadth first, pid first;
// ErrNoProcess when there is no process pid (its task directory is what
// tells, without a read of its stat file).
func Tree(pid int) ([]int, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("%w: PID %d", ErrNoProcess, pid)
	}
	seen := map[int]bool{pid: true}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		kids, err := Children(out[i])
		if err != nil {
			if i == 0 {
				return nil, err
			}
			continue
		}
		for _, k := range kids {
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
	}
	return out, nil
}

// Status is the part of /proc/PID/status that Cedana uses.
type Status struct {
	UID, GID int // real IDs; -1 when not listed
	// InnerPID is the process's PID in its own, innermost PID namespace
	// (the last field of NSpid): the PID itself outside any nested one.
	InnerPID int
}

// ReadStatus reads /proc/PID/status.
func ReadStatus(pid int) (Status, error) {
	data, err := readFile(filepath.Join(Root, strconv.Itoa(pid), "status"))
	if err != nil {
		return Status{}, err
	}
	st := Status{UID: -1, GID: -1, InnerPID: pid}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Uid:":
			st.UID, _ = strconv.Atoi(f[1])
		case "Gid:":
			st.GID, _ = strconv.Atoi(f[1])
		case "NSpid:":
			if n, err := strconv.Atoi(f[len(f)-1]); err == nil {
				st.InnerPID = n
			}
		}
	}
	return st, nil
}

// Cmdline returns the process's argv.
func Cmdline(pid int) []string {
	data, err := readFile(filepath.Join(Root, strconv.Itoa(pid), "cmdline"))
	if err != nil || len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// Link reads a /proc/PID/<name> symlink (exe, cwd, root), or "".
func Link(pid int, name string) string {
	s, _ := os.Readlink(filepath.Join(Root, strconv.Itoa(pid), name))
	return s
}

// TTYName turns a tty_nr from stat into a device path, or "" for none.
func TTYName(ttyNr int) string {
	if ttyNr == 0 {
		return ""
	}
	major := (ttyNr >> 8) & 0xfff
	minor := (ttyNr & 0xff) | ((ttyNr >> 12) & 0xfff00)
	switch {
	case major >= 136 && major <= 143:
		return fmt.Sprintf("/dev/pts/%d", (major-136)*256+minor)
	case major == 4 && minor < 64:
		return fmt.Sprintf("/dev/tty%d", minor)
	case major == 4:
		return fmt.Sprintf("/dev/ttyS%d", minor-64)
	case major == 5 && minor == 0:
		return "/dev/tty"
	}
	return fmt.Sprintf("tty(%d:%d)", major, minor)
}

// PIDHolders returns, for each of pids that is taken, who holds it: a
// process with that PID, or a process whose process group or session has
// that ID (a PID stays taken while it names a group or session, even after
// its process is gone). Missing entries are free.
func PIDHolders(pids []int) map[int]*Stat {
	want := map[int]bool{}
	for _, p := range pids {
		want[p] = true
	}
	out := map[int]*Stat{}
	ents, err := os.ReadDir(Root)
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := ReadStat(pid)
		if err != nil {
			continue
		}
		for _, id := range []int{st.PID, st.PGID, st.SID} {
			if want[id] && out[id] == nil {
				out[id] = st
			}
		}
	}
	return out
}

// ResourceUse is a live process's resource use.
type ResourceUse struct {
	RSS        int64     // resident bytes of the whole tree
	CPUPercent float64   // average CPU use of the root since it started
	Started    time.Time // when the root started
}

// Usage measures the tree rooted at pid, if pid is still the process that
// started at startTime.
func Usage(pid int, startTime uint64) (ResourceUse, bool) {
	st, err := ReadStat(pid)
	if err != nil || st.StartTime != startTime {
		return ResourceUse{}, false
	}
	const hz = 100 // USER_HZ on every Linux architecture Cedana runs on
	boot := bootTime()
	started := boot.Add(time.Duration(st.StartTime) * time.Second / hz)
	u := ResourceUse{Started: started}
	tree, _ := Tree(pid)
	page := int64(os.Getpagesize())
	for _, p := range tree {
		if s, err := ReadStat(p); err == nil {
			u.RSS += s.RSSPages * page
		}
	}
	if up := time.Since(started).Seconds(); up > 0 {
		u.CPUPercent = 100 * float64(st.UTime+st.STime) / hz / up
	}
	return u, true
}

// bootTime reads the machine's boot time from /proc/stat.
func bootTime() time.Time {
	data, err := readFile(filepath.Join(Root, "stat"))
	if err != nil {
		return time.Time{}
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				return time.Unix(n, 0)
			}
		}
	}
	return time.Time{}
}
