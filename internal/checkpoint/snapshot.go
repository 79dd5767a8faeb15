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

// ErrMPTCP refuses a dump of a tree holding a Multipath TCP socket, which
// CRIU cannot checkpoint. It is an ErrInvalidInput.
var ErrMPTCP = fmt.Errorf("%w: CRIU cannot checkpoint Multipath TCP sockets", ErrInvalidInput)

// snapshot is what Cedana learned about a tree just before dumping it.
type snapshot struct {
	processes []archive.Process
	pids      map[int]bool
	// startTimes identify each process (PID + start time), so that a
	// recycled PID is never mistaken for a dumped process.
	startTimes map[int]uint64
	// needs says which CRIU options the tree requires, and why.
	shellJob, tcpEstablished, fileLocks bool
	why                                 []string
	// writable are regular files open for writing, by path.
	writable []writableFile
	// ttys are the pseudo-terminals the tree holds whose other end (the
	// master) is outside the tree, as CRIU keys.
	ttys []string
	// mptcp describes the Multipath TCP sockets of the tree, which CRIU
	// cannot dump, e.g. "PID 42 (server) has one, fd 3 (LISTEN 127.0.0.1:8080)".
	mptcp []string
}

type writableFile struct {
	path string // the path the process opened
	via  string // /proc/PID/fd/N or map_files/A-B: reads the very inode the process holds
}

// Tree describes a live process tree for a checkpoint: the manifest's
// process list and the CRIU options it needs, with the reasons.
type Tree struct {
	Processes      []archive.Process
	ShellJob       bool
	TCPEstablished bool
	// FileLocks: a task holds a file lock, which CRIU dumps only with
	// --file-locks.
	FileLocks bool
	// Reasons explain ShellJob, TCPEstablished and FileLocks, e.g.
	// "tcp-established: PID 42 has a ESTABLISHED connection 10.0.0.2:5432 -> ...".
	Reasons []string
	// MPTCP lists the Multipath TCP sockets of the tree (CRIU cannot dump
	// them), e.g. "PID 42 (server) has one, fd 3 (LISTEN 127.0.0.1:8080)".
	MPTCP []string
}

// DescribeTree describes the tree rooted at pid as it is now. Other
// engines (containers) use it for their manifests. Unlike a process dump,
// it does not refuse a tree that CRIU cannot dump; Tree.MPTCP says why.
func DescribeTree(pid int) (*Tree, error) {
	pids, err := proc.Tree(pid)
	if err != nil {
		return nil, err
	}
	s, err := snapshotOf(pid, pids)
	if err != nil {
		return nil, err
	}
	return &Tree{Processes: s.processes, ShellJob: s.shellJob, TCPEstablished: s.tcpEstablished,
		FileLocks: s.fileLocks, Reasons: s.why, MPTCP: s.mptcp}, nil
}

// takeSnapshot describes the tree rooted at pid as it is now, before a
// dump, and refuses trees CRIU is known to fail on (before CRIU freezes
// them), saying what to change.
func takeSnapshot(pid int) (*snapshot, error) {
	pids, err := proc.Tree(pid)
	if err != nil {
		return nil, err
	}
	s, err := snapshotOf(pid, pids)
	if err != nil {
		return nil, err
	}
	if len(s.mptcp) > 0 {
		return nil, mptcpError(s.mptcp)
	}
	return s, nil
}

// mptcpError explains a refusal to dump Multipath TCP sockets.
func mptcpError(socks []string) error {
	return fmt.Errorf("%w (\"Unsupported proto 262\"): %s; nothing was dumped, the process is still running"+
		"\n  fix: restart it with GODEBUG=multipathtcp=0 in its environment (Go ≥ 1.24 listens with MPTCP by default; "+
		"in Go code, net.ListenConfig.SetMultipathTCP(false) does the same); most programs fall back to "+
		"plain TCP when started while MPTCP is off (sysctl -w net.mptcp.enabled=0, per network namespace)",
		ErrMPTCP, strings.Join(socks, "; "))
}

// taskInfo is one task as read from /proc, before it is described.
type taskInfo struct {
	pid   int
	st    *proc.Stat
	fds   []proc.FD
	mntNS string
}

// ptyEnd names one pseudo-terminal: its index (N of /dev/pts/N) and the
// mount namespace the index was seen in (each devpts instance counts from
// 0; tasks of one mount namespace see the same /dev/pts).
type ptyEnd struct {
	mntNS string
	index int
}

// snapshotOf describes the processes pids, whose root is pid.
func snapshotOf(pid int, pids []int) (*snapshot, error) {
	s := &snapshot{pids: map[int]bool{}, startTimes: map[int]uint64{}}
	for _, p := range pids {
		s.pids[p] = true
	}
	// First the tasks and their descriptors, to learn which pseudo-terminal
	// masters the tree holds: a terminal whose master is inside the tree
	// (tmux, screen, an expect script) is dumped and restored with it, and
	// makes no shell job.
	var tasks []taskInfo
	masters := map[ptyEnd]int{} // -> the PID holding the master
	for _, p := range pids {
		st, err := proc.ReadStat(p)
		if err != nil {
			if p == pid {
				return nil, err
			}
			continue // a child exited meanwhile
		}
		if st.State == 'Z' && p == pid {
			return nil, fmt.Errorf("%w: PID %d is a zombie (it has exited and waits for its parent to reap it); there is nothing left to checkpoint", ErrInvalidInput, p)
		}
		ti := taskInfo{pid: p, st: st, mntNS: proc.Link(p, "ns/mnt")}
		if ti.mntNS == "" && p != pid {
			if _, err := proc.ReadStat(p); err != nil {
				// It exited between the two reads (a shell loop's short
				// child): without its namespace, its terminal would look
				// like one outside the tree and make a shell job.
				continue
			}
		}
		ti.fds, _ = proc.FDs(p)
		for _, fd := range ti.fds {
			if fd.PTYIndex >= 0 {
				if _, ok := masters[ptyEnd{ti.mntNS, fd.PTYIndex}]; !ok {
					masters[ptyEnd{ti.mntNS, fd.PTYIndex}] = p
				}
			}
		}
		tasks = append(tasks, ti)
	}
	// internalPTY reports whether path is a /dev/pts/N whose master the tree
	// holds, and explains it once.
	explained := map[ptyEnd]bool{}
	internalPTY := func(ti taskInfo, path string) bool {
		n, ok := proc.PTSIndex(path)
		if !ok {
			return false
		}
		end := ptyEnd{ti.mntNS, n}
		holder, ok := masters[end]
		if ok && !explained[end] {
			explained[end] = true
			s.why = append(s.why, fmt.Sprintf("terminal: %s (PID %d) has its master in PID %d, inside the tree: no shell job, it is dumped with the tree", path, ti.pid, holder))
		}
		return ok
	}

	seenFile := map[string]bool{}
	for _, ti := range tasks {
		p, st, fds := ti.pid, ti.st, ti.fds
		s.startTimes[p] = st.StartTime
		ids, _ := proc.ReadStatus(p)
		ap := archive.Process{
			PID: p, PPID: st.PPID, PGID: st.PGID, SID: st.SID, Name: st.Comm,
			Exe: proc.Link(p, "exe"), Cmdline: proc.Cmdline(p), Cwd: proc.Link(p, "cwd"),
			UID: ids.UID, GID: ids.GID, RSS: uint64(st.RSSPages) * uint64(os.Getpagesize()),
			TTY: proc.TTYName(st.TTYNr),
		}
		if ids.InnerPID > 0 && ids.InnerPID != p {
			ap.NSPID = ids.InnerPID
		}
		if ap.TTY != "" && !s.shellJob && !internalPTY(ti, ap.TTY) {
			s.shellJob = true
			s.why = append(s.why, fmt.Sprintf("shell-job: PID %d has controlling terminal %s, whose other end is outside the tree", p, ap.TTY))
		}
		if (!s.pids[st.SID] || !s.pids[st.PGID]) && !s.shellJob {
			s.shellJob = true
			s.why = append(s.why, fmt.Sprintf("shell-job: PID %d's session (%d) or process group (%d) leader is outside the tree", p, st.SID, st.PGID))
		}
		var socks map[uint64]proc.Socket
		for _, fd := range fds {
			if fd.Type == "socket" {
				socks = proc.Sockets(p)
				break
			}
		}
		if socks != nil {
			// Unreadable protocols (no pidfd_getfd) are left to CRIU, whose
			// failure is explained too (see criu's hints).
			mp, _ := proc.MPTCPSockets(p, fds, socks)
			for _, fd := range mp {
				desc := fmt.Sprintf("PID %d (%s) has one, fd %d", p, st.Comm, fd.Num)
				if so, ok := socks[fd.Inode]; ok {
					desc += fmt.Sprintf(" (%s %s)", so.State, so.Local)
				}
				s.mptcp = append(s.mptcp, desc)
			}
		}
		for _, fd := range fds {
			ap.Files = append(ap.Files, archive.OpenFile{FD: fd.Num, Path: fd.Path, Type: fd.Type, Flags: fd.Flags, Pos: fd.Pos, Locks: fd.Locks})
			if len(fd.Locks) > 0 && !s.fileLocks {
				s.fileLocks = true
				s.why = append(s.why, fmt.Sprintf("file-locks: PID %d holds a lock on %s (%s)", p, fd.Path, fd.Locks[0]))
			}
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
				if _, slave := proc.PTSIndex(fd.Path); slave && !internalPTY(ti, fd.Path) {
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
		// Files mapped shared and writable change with the process's memory
		// and travel like files open for writing (a JVM's hsperfdata file
		// is one; CRIU cannot restore the mapping when the file is gone).
		maps, _ := proc.SharedWritableMappings(p)
		for _, m := range maps {
			if carryable(m.Path) && !seenFile[m.Path] {
				seenFile[m.Path] = true
				s.writable = append(s.writable, writableFile{path: m.Path, via: m.MapFile(p)})
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
