package container

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/proc"
)

// treeInfo is what Cedana learns about a container's processes before a
// checkpoint: the manifest's process list and what CRIU will need.
type treeInfo struct {
	processes []archive.Process
	// tcp describes the first established TCP connection, if any.
	tcp string
	// hostFiles are descriptors on files of the host that the container
	// cannot see (CRIU fails on them), as "PID fd N: PATH".
	hostFiles []string
	// mptcp are the container's Multipath TCP sockets, which CRIU cannot
	// dump ("Unsupported proto 262").
	mptcp []string
}

// describeTree reads the container's process tree rooted at pid (its init,
// as seen from the host), through the same description as process dumps,
// and adds what only containers care about: files of the host that the
// container cannot see.
func describeTree(pid int) (*treeInfo, error) {
	t, err := checkpoint.DescribeTree(pid)
	if err != nil {
		return nil, err
	}
	ti := &treeInfo{processes: t.Processes, mptcp: t.MPTCP}
	for _, r := range t.Reasons {
		if strings.HasPrefix(r, "tcp-established:") && ti.tcp == "" {
			ti.tcp = strings.TrimSpace(strings.TrimPrefix(r, "tcp-established:"))
		}
	}
	mounts := mountIDs(pid)
	for _, p := range t.Processes {
		for _, f := range p.Files {
			switch f.Type {
			case "file", "dir", "deleted":
				if mounts == nil {
					continue
				}
				// A descriptor closed or reopened since it was listed
				// (a shell's `echo > file`) says nothing: skip it.
				id := fdMountID(p.PID, f.FD)
				if id < 0 || mounts[id] || fdPath(p.PID, f.FD) != f.Path {
					continue
				}
				ti.hostFiles = append(ti.hostFiles, fmt.Sprintf("PID %d (%s) fd %d: %s", p.PID, p.Name, f.FD, f.Path))
			}
		}
	}
	return ti, nil
}

// mountIDs returns the IDs of the mounts in pid's mount namespace, or nil
// if they cannot be read.
func mountIDs(pid int) map[int]bool {
	f, err := os.Open(filepath.Join(proc.Root, strconv.Itoa(pid), "mountinfo"))
	if err != nil {
		return nil
	}
	defer f.Close()
	ids := map[int]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if id, err := strconv.Atoi(strings.SplitN(sc.Text(), " ", 2)[0]); err == nil {
			ids[id] = true
		}
	}
	return ids
}

// fdPath returns the target of a descriptor, or "" if it is gone.
func fdPath(pid, fd int) string {
	target, err := os.Readlink(filepath.Join(proc.Root, strconv.Itoa(pid), "fd", strconv.Itoa(fd)))
	if err != nil {
		return ""
	}
	return target
}

// fdMountID returns the mount ID of a descriptor (-1 if unknown).
func fdMountID(pid, fd int) int {
	data, err := os.ReadFile(filepath.Join(proc.Root, strconv.Itoa(pid), "fdinfo", strconv.Itoa(fd)))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "mnt_id:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// overlayUpper returns the upperdir of the overlay mounted at dir, as the
// host's mount table shows it, or "".
func overlayUpper(dir string) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	clean := filepath.Clean(dir)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	upper := ""
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || unescapeMount(fields[4]) != clean {
			continue
		}
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+3 >= len(fields) {
			continue
		}
		upper = "" // the last mount on dir wins
		if fields[sep+1] != "overlay" {
			continue
		}
		for _, o := range strings.Split(fields[sep+3], ",") {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				upper = unescapeMount(v)
			}
		}
	}
	return upper
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
