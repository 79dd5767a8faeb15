package template

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/proc"
)

// Scan is what a live tree tells about cloning it.
type Scan struct {
	// Hazards are reasons clones of the tree would not be independent or
	// would break, e.g. "PID 42 (python3) has an established TCP
	// connection 10.0.0.2:40112 -> 10.0.0.9:5432". Non-empty: refuse.
	Hazards []string
	// Listen, Outputs and Executables: as in Template.
	Listen      []int
	Outputs     []string
	Executables []FileID
	// RSS is the tree's resident memory in bytes.
	RSS int64
	// Processes counts the tree's processes.
	Processes int
}

// Err returns nil, or an ErrUnsafe error listing the hazards.
func (s *Scan) Err() error {
	if len(s.Hazards) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s; nothing was created", ErrUnsafe, strings.Join(s.Hazards, "; "))
}

// ScanTree inspects the tree rooted at pid: what clones could not share
// (established TCP connections: a peer talks to one process, not to N;
// regular files open for writing other than its stdout/stderr, and files
// mapped shared and writable: clones would write into the same file), the
// ports it listens on, its output files and its mapped executables.
func ScanTree(pid int) (*Scan, error) {
	pids, err := proc.Tree(pid)
	if err != nil {
		return nil, fmt.Errorf("%w: PID %d: %v", ErrInvalid, pid, err)
	}
	s := &Scan{Processes: len(pids)}
	listen, outputs, exes := map[int]bool{}, map[string]bool{}, map[string]FileID{}
	for _, p := range pids {
		comm := fmt.Sprintf("PID %d", p)
		if st, err := proc.ReadStat(p); err == nil {
			comm = fmt.Sprintf("PID %d (%s)", p, st.Comm)
		}
		fds, err := proc.FDs(p)
		if err != nil {
			return nil, err
		}
		socks := proc.Sockets(p)
		for _, fd := range fds {
			switch fd.Type {
			case "socket":
				sk, ok := socks[fd.Inode]
				if !ok || !strings.HasPrefix(sk.Family, "tcp") {
					continue
				}
				switch sk.State {
				case "LISTEN":
					if _, port, err := splitPort(sk.Local); err == nil {
						listen[port] = true
					}
				case "ESTABLISHED", "SYN_SENT", "SYN_RECV", "CLOSE_WAIT":
					s.Hazards = append(s.Hazards, fmt.Sprintf("%s has an established TCP connection %s -> %s (fd %d): its peer cannot talk to several clones; close it before making the template",
						comm, sk.Local, sk.Remote, fd.Num))
				}
			case "file":
				if !fd.Writable() {
					continue
				}
				if fd.Num == 1 || fd.Num == 2 {
					outputs[fd.Path] = true // each clone gets its own log instead
					continue
				}
				s.Hazards = append(s.Hazards, fmt.Sprintf("%s has %s open for writing (fd %d): every clone would write into the same file",
					comm, fd.Path, fd.Num))
			}
		}
		if maps, err := proc.SharedWritableMappings(p); err == nil {
			for _, m := range maps {
				s.Hazards = append(s.Hazards, fmt.Sprintf("%s maps %s shared and writable: every clone would write into the same file", comm, m.Path))
			}
		}
		for _, path := range executables(p) {
			if _, ok := exes[path]; ok {
				continue
			}
			if id, err := Identify(path); err == nil {
				exes[path] = id
			}
		}
		s.RSS += rss(p)
	}
	for port := range listen {
		s.Listen = append(s.Listen, port)
	}
	sort.Ints(s.Listen)
	for o := range outputs {
		s.Outputs = append(s.Outputs, o)
	}
	sort.Strings(s.Outputs)
	for _, id := range exes {
		s.Executables = append(s.Executables, id)
	}
	sort.Slice(s.Executables, func(i, k int) bool { return s.Executables[i].Path < s.Executables[k].Path })
	return s, nil
}

// splitPort parses "host:port".
func splitPort(addr string) (string, int, error) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return "", 0, fmt.Errorf("no port in %q", addr)
	}
	port, err := strconv.Atoi(addr[i+1:])
	return addr[:i], port, err
}

// executables lists the files pid maps executable, and its program.
func executables(pid int) []string {
	out := []string{}
	if exe := proc.Link(pid, "exe"); strings.HasPrefix(exe, "/") && !strings.HasSuffix(exe, " (deleted)") {
		out = append(out, exe)
	}
	f, err := os.Open(filepath.Join(proc.Root, strconv.Itoa(pid), "maps"))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 6 || len(fl[1]) < 3 || fl[1][2] != 'x' || !strings.HasPrefix(fl[5], "/") || len(fl) > 6 {
			continue // not executable, anonymous, or "(deleted)"
		}
		out = append(out, fl[5])
	}
	return out
}

// rss returns a process's resident set size in bytes (0 if unknown).
func rss(pid int) int64 {
	b, err := os.ReadFile(filepath.Join(proc.Root, strconv.Itoa(pid), "statm"))
	if err != nil {
		return 0
	}
	fl := strings.Fields(string(b))
	if len(fl) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(fl[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// Identify returns the identity of the file at path now.
func Identify(path string) (FileID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return FileID{}, err
	}
	return FileID{Path: path, Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size, MtimeNs: st.Mtim.Nano()}, nil
}

// CheckExecutables refuses a template one of whose programs or libraries
// changed on disk since it was made: the clone would run old code against
// a new file (CRIU maps the file at its path), or fail half-way.
func CheckExecutables(t *Template) error {
	var changed []string
	for _, want := range t.Executables {
		got, err := Identify(want.Path)
		switch {
		case err != nil:
			changed = append(changed, fmt.Sprintf("%s is gone (%v)", want.Path, err))
		case got.Size != want.Size:
			changed = append(changed, fmt.Sprintf("%s changed size (%d → %d bytes)", want.Path, want.Size, got.Size))
		case got.MtimeNs != want.MtimeNs || got.Ino != want.Ino || got.Dev != want.Dev:
			changed = append(changed, fmt.Sprintf("%s was modified or replaced", want.Path))
		}
	}
	if len(changed) == 0 {
		return nil
	}
	return fmt.Errorf("%w: template %s: %s since the template was made (%s); make the template again from a process running the new version",
		ErrUnsafe, t.Name, strings.Join(changed, "; "), t.Created.Format("2006-01-02 15:04:05Z07:00"))
}

// ScanManifest is ScanTree for a checkpoint made elsewhere (template
// create --from FILE): the manifest lists each process's descriptors and
// sockets as they were at dump time. Its executables are the programs
// the manifest names, identified as they are on this host now (their
// libraries are not known without decoding CRIU's images).
func ScanManifest(m *archive.Manifest) *Scan {
	s := &Scan{Processes: len(m.Processes)}
	listen, outputs, exes := map[int]bool{}, map[string]bool{}, map[string]bool{}
	for _, p := range m.Processes {
		comm := fmt.Sprintf("PID %d (%s)", p.PID, p.Name)
		for _, sk := range p.Sockets {
			if !strings.HasPrefix(sk.Family, "tcp") {
				continue
			}
			switch sk.State {
			case "LISTEN":
				if _, port, err := splitPort(sk.Local); err == nil {
					listen[port] = true
				}
			case "ESTABLISHED", "SYN_SENT", "SYN_RECV", "CLOSE_WAIT":
				s.Hazards = append(s.Hazards, fmt.Sprintf("%s had an established TCP connection %s -> %s (fd %d) when it was checkpointed: its peer cannot talk to several clones",
					comm, sk.Local, sk.Remote, sk.FD))
			}
		}
		for _, f := range p.Files {
			acc := f.Flags & syscall.O_ACCMODE
			if f.Type != "file" || (acc != syscall.O_WRONLY && acc != syscall.O_RDWR) {
				continue
			}
			if f.FD == 1 || f.FD == 2 {
				outputs[f.Path] = true
				continue
			}
			s.Hazards = append(s.Hazards, fmt.Sprintf("%s had %s open for writing (fd %d): every clone would write into the same file", comm, f.Path, f.FD))
		}
		if p.Exe != "" && !exes[p.Exe] {
			exes[p.Exe] = true
			if id, err := Identify(p.Exe); err == nil {
				s.Executables = append(s.Executables, id)
			}
		}
		s.RSS += int64(p.RSS)
	}
	if m.Options.TCPEstablished && len(s.Hazards) == 0 {
		s.Hazards = append(s.Hazards, "the checkpoint holds established TCP connections (it was dumped with tcp-established): their peers cannot talk to several clones")
	}
	for port := range listen {
		s.Listen = append(s.Listen, port)
	}
	sort.Ints(s.Listen)
	for o := range outputs {
		s.Outputs = append(s.Outputs, o)
	}
	sort.Strings(s.Outputs)
	return s
}
