package checkpoint

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/proc"
)

// snapshot is what Cedana learned about a tree just before dumping it.
type snapshot struct {
	processes []archive.Process
	pids      map[int]bool
	// startTimes identify each process (PID + start time), so that a
	// recycled PID is never mistaken for a dumped process.
	startTimes map[int]uint64
	// needs says which CRIU options the tree requires, and why.
	shellJob, tcpEstablished bool
	why                      []string
	// writable are regular files open for writing, by path.
	writable []writableFile
	// ttys are the pseudo-terminals the tree holds, as CRIU keys.
	ttys []string
}

type writableFile struct {
	path string // the path the process opened
	via  string // /proc/PID/fd/N: reads the very inode the process holds
}

// Tree describes a live process tree for a checkpoint: the manifest's
// process list and the CRIU options it needs, with the reasons.
type Tree struct {
	Processes      []archive.Process
	ShellJob       bool
	TCPEstablished bool
	// Reasons explain ShellJob and TCPEstablished, e.g. "tcp-established:
	// PID 42 has a ESTABLISHED connection 10.0.0.2:5432 -> ...".
	Reasons []string
}

// DescribeTree describes the tree rooted at pid as it is now. Other
// engines (containers) use it for their manifests.
func DescribeTree(pid int) (*Tree, error) {
	s, err := takeSnapshot(pid)
	if err != nil {
		return nil, err
	}
	return &Tree{Processes: s.processes, ShellJob: s.shellJob, TCPEstablished: s.tcpEstablished, Reasons: s.why}, nil
}

// takeSnapshot describes the tree rooted at pid as it is now.
func takeSnapshot(pid int) (*snapshot, error) {
	pids, err := proc.Tree(pid)
	if err != nil {
		return nil, err
	}
	return snapshotOf(pid, pids)
}

// snapshotOf describes the processes pids, whose root is pid.
func snapshotOf(pid int, pids []int) (*snapshot, error) {
	s := &snapshot{pids: map[int]bool{}, startTimes: map[int]uint64{}}
	for _, p := range pids {
		s.pids[p] = true
	}
	seenFile := map[string]bool{}
	for _, p := range pids {
		st, err := proc.ReadStat(p)
		if err != nil {
			if p == pid {
				return nil, err
			}
			continue // a child exited meanwhile
		}
		if st.State == 'Z' {
			if p == pid {
				return nil, fmt.Errorf("%w: PID %d is a zombie (it has exited and waits for its parent to reap it); there is nothing left to checkpoint", ErrInvalidInput, p)
			}
		}
		s.startTimes[p] = st.StartTime
		uid, gid, _ := proc.IDs(p)
		ap := archive.Process{
			PID: p, PPID: st.PPID, PGID: st.PGID, SID: st.SID, Name: st.Comm,
			Exe: proc.Link(p, "exe"), Cmdline: proc.Cmdline(p), Cwd: proc.Link(p, "cwd"),
			UID: uid, GID: gid, RSS: uint64(st.RSSPages) * uint64(os.Getpagesize()),
			TTY: proc.TTYName(st.TTYNr),
		}
		if ap.TTY != "" && !s.shellJob {
			s.shellJob = true
			s.why = append(s.why, fmt.Sprintf("shell-job: PID %d has controlling terminal %s", p, ap.TTY))
		}
		if (!s.pids[st.SID] || !s.pids[st.PGID]) && !s.shellJob {
			s.shellJob = true
			s.why = append(s.why, fmt.Sprintf("shell-job: PID %d's session (%d) or process group (%d) leader is outside the tree", p, st.SID, st.PGID))
		}
		fds, _ := proc.FDs(p)
		var socks map[uint64]proc.Socket
		for _, fd := range fds {
			if fd.Type == "socket" {
				socks = proc.Sockets(p)
				break
			}
		}
		for _, fd := range fds {
			ap.Files = append(ap.Files, archive.OpenFile{FD: fd.Num, Path: fd.Path, Type: fd.Type, Flags: fd.Flags, Pos: fd.Pos})
			switch fd.Type {
			case "socket":
				so, ok := socks[fd.Inode]
				if !ok {
					continue
				}
				ap.Sockets = append(ap.Sockets, archive.SocketInfo{FD: fd.Num, Family: so.Family, State: so.State, Local: so.Local, Remote: so.Remote, Inode: so.Inode})
				if strings.HasPrefix(so.Family, "tcp") && so.State != "LISTEN" && so.State != "CLOSE" && !s.tcpEstablished {
					s.tcpEstablished = true
					s.why = append(s.why, fmt.Sprintf("tcp-established: PID %d has a %s connection %s -> %s", p, so.State, so.Local, so.Remote))
				}
			case "tty":
				if strings.HasPrefix(fd.Path, "/dev/pts/") {
					if key, err := criu.TTYKey(filepath.Join(proc.Root, fmt.Sprint(p), "fd", fmt.Sprint(fd.Num))); err == nil && !slices.Contains(s.ttys, key) {
						s.ttys = append(s.ttys, key)
					}
				}
			case "file":
				if fd.Writable() && carryable(fd.Path) && !seenFile[fd.Path] {
					seenFile[fd.Path] = true
					s.writable = append(s.writable, writableFile{path: fd.Path, via: filepath.Join(proc.Root, fmt.Sprint(p), "fd", fmt.Sprint(fd.Num))})
				}
			}
		}
		s.processes = append(s.processes, ap)
	}
	return s, nil
}

// carryable reports whether a file open for writing may travel in an
// archive: an absolute path outside the kernel's pseudo filesystems.
func carryable(path string) bool {
	if !filepath.IsAbs(path) {
		return false
	}
	for _, p := range []string{"/proc/", "/sys/", "/dev/", "/run/cedana/"} {
		if strings.HasPrefix(path, p) {
			return false
		}
	}
	return true
}

// rss is the tree's total resident memory, a bound for the images' size.
func (s *snapshot) rss() uint64 {
	var n uint64
	for _, p := range s.processes {
		n += p.RSS
	}
	return n
}

// carriedFiles picks the writable files that fit the limits, in order.
func (s *snapshot) carriedFiles(perFile, total int64) (out []archive.FileSource, skipped []string) {
	if perFile <= 0 {
		return nil, nil
	}
	var sum int64
	for _, w := range s.writable {
		var st syscall.Stat_t
		if err := syscall.Stat(w.via, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
			continue
		}
		if st.Size > perFile || sum+st.Size > total {
			skipped = append(skipped, fmt.Sprintf("%s (%d bytes)", w.path, st.Size))
			continue
		}
		sum += st.Size
		out = append(out, archive.FileSource{
			Source: w.via,
			Meta: archive.CarriedFile{Path: w.path, Size: st.Size, Mode: uint32(st.Mode & 0o7777),
				UID: int(st.Uid), GID: int(st.Gid)},
		})
	}
	return out, skipped
}
