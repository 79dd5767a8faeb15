package proc

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// FD is one open file descriptor.
type FD struct {
	Num   int
	Path  string // readlink of /proc/PID/fd/N
	Type  string // file, dir, pipe, socket, tty, device, anon, deleted
	Flags int
	Pos   int64
	// Inode is the socket or pipe inode for "socket:[N]" and "pipe:[N]".
	Inode uint64
	// PTYIndex is, for the master side of a pseudo-terminal (/dev/ptmx),
	// the index N of its slave /dev/pts/N (fdinfo's tty-index); -1 for
	// every other descriptor.
	PTYIndex int
	// Locks are the file locks (POSIX, OFD, flock) this process holds
	// through the descriptor, as fdinfo lists them, e.g.
	// "POSIX  ADVISORY  WRITE 42 fe:00:1234 0 EOF".
	Locks []string
}

// Writable reports whether the descriptor was opened for writing.
func (f FD) Writable() bool {
	acc := f.Flags & syscall.O_ACCMODE
	return acc == syscall.O_WRONLY || acc == syscall.O_RDWR
}

// FDs lists a process's open file descriptors.
func FDs(pid int) ([]FD, error) {
	dir := filepath.Join(Root, strconv.Itoa(pid), "fd")
	names, err := readDirNames(dir)
	if err != nil {
		return nil, fmt.Errorf("list open files of PID %d: %w", pid, err)
	}
	out := make([]FD, 0, len(names))
	for _, name := range names {
		n, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		link := filepath.Join(dir, name)
		target, err := os.Readlink(link)
		if err != nil {
			continue // closed meanwhile
		}
		fd := FD{Num: n, Path: target}
		fd.Flags, fd.Pos, fd.PTYIndex, fd.Locks = fdinfo(pid, n)
		fd.Type, fd.Inode = classify(link, target)
		out = append(out, fd)
	}
	return out, nil
}

// fdinfo reads a descriptor's flags, position, the locks held through it
// and, for a pseudo-terminal master, its slave's index (-1 when it is
// none).
func fdinfo(pid, fd int) (flags int, pos int64, ptyIndex int, locks []string) {
	ptyIndex = -1
	data, err := readFile(filepath.Join(Root, strconv.Itoa(pid), "fdinfo", strconv.Itoa(fd)))
	if err != nil {
		return 0, 0, -1, nil
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "pos":
			pos, _ = strconv.ParseInt(v, 10, 64)
		case "flags":
			f, _ := strconv.ParseInt(v, 8, 64)
			flags = int(f)
		case "tty-index":
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				ptyIndex = n
			}
		case "lock":
			// "1: POSIX  ADVISORY  WRITE 42 fe:00:1234 0 EOF"
			if _, l, ok := strings.Cut(v, ":"); ok {
				locks = append(locks, strings.TrimSpace(l))
			}
		}
	}
	return flags, pos, ptyIndex, locks
}

// PTSIndex returns N for a pseudo-terminal slave path /dev/pts/N.
func PTSIndex(path string) (int, bool) {
	rest, ok := strings.CutPrefix(path, "/dev/pts/")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil && n >= 0
}

func classify(link, target string) (string, uint64) {
	inode := func(prefix string) uint64 {
		n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, prefix), "]"), 10, 64)
		return n
	}
	switch {
	case strings.HasPrefix(target, "socket:["):
		return "socket", inode("socket:[")
	case strings.HasPrefix(target, "pipe:["):
		return "pipe", inode("pipe:[")
	case strings.HasPrefix(target, "anon_inode:"):
		return "anon", 0
	case strings.HasPrefix(target, "/dev/pts/"), strings.HasPrefix(target, "/dev/tty"), target == "/dev/console", target == "/dev/ptmx":
		return "tty", 0
	case strings.HasSuffix(target, " (deleted)"):
		return "deleted", 0
	case strings.HasPrefix(target, "/dev/"):
		return "device", 0
	}
	var st syscall.Stat_t
	if err := syscall.Stat(link, &st); err == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		return "dir", 0
	}
	return "file", 0
}

// Socket is an inet or unix socket found in /proc/PID/net.
type Socket struct {
	Family string // tcp, tcp6, udp, udp6, unix
	State  string
	Local  string
	Remote string
	Inode  uint64
}

var tcpStates = map[string]string{
	"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
	"05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
	"09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}

// Sockets returns the sockets of the network namespace pid is in, by inode.
func Sockets(pid int) map[uint64]Socket {
	out := map[uint64]Socket{}
	base := filepath.Join(Root, strconv.Itoa(pid), "net")
	for _, fam := range []string{"tcp", "tcp6", "udp", "udp6"} {
		readInet(filepath.Join(base, fam), fam, out)
	}
	readUnix(filepath.Join(base, "unix"), out)
	return out
}

func readInet(path, family string, out map[uint64]Socket) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 10 {
			continue
		}
		ino, err := strconv.ParseUint(fl[9], 10, 64)
		if err != nil || ino == 0 {
			continue
		}
		state := tcpStates[fl[3]]
		if strings.HasPrefix(family, "udp") {
			state = "UDP"
		}
		out[ino] = Socket{Family: family, State: state, Local: inetAddr(fl[1]), Remote: inetAddr(fl[2]), Inode: ino}
	}
}

// inetAddr decodes "0100007F:1F90" (little-endian words) into "127.0.0.1:8080".
func inetAddr(s string) string {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return s
	}
	raw, err := hex.DecodeString(h)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return s
	}
	for i := 0; i+4 <= len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	port, _ := strconv.ParseUint(p, 16, 16)
	return net.JoinHostPort(net.IP(raw).String(), strconv.FormatUint(port, 10))
}

func readUnix(path string, out map[uint64]Socket) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 7 {
			continue
		}
		ino, err := strconv.ParseUint(fl[6], 10, 64)
		if err != nil {
			continue
		}
		s := Socket{Family: "unix", Inode: ino, State: unixState(fl[5])}
		if len(fl) >= 8 {
			s.Local = fl[7]
		}
		out[ino] = s
	}
}

func unixState(st string) string {
	switch st {
	case "01":
		return "UNCONNECTED"
	case "02":
		return "CONNECTING"
	case "03":
		return "CONNECTED"
	case "04":
		return "DISCONNECTING"
	}
	return st
}

// Mapping is a file mapped into a process's memory.
type Mapping struct {
	Start, End uint64 // the mapping's addresses
	Path       string
}

// MapFile is the /proc/PID/map_files link of the mapping: opening it
// reaches the very inode mapped, even if the path was replaced since.
func (m Mapping) MapFile(pid int) string {
	return filepath.Join(Root, strconv.Itoa(pid), "map_files", fmt.Sprintf("%x-%x", m.Start, m.End))
}

// SharedWritableMappings lists the regular files pid maps shared and
// writable (MAP_SHARED with PROT_WRITE: "rw-s" in /proc/PID/maps), whose
// content the process changes without holding a descriptor open, e.g. a
// JVM's /tmp/hsperfdata_USER/PID. Deleted files are left out. Each path
// is listed once.
func SharedWritableMappings(pid int) ([]Mapping, error) {
	data, err := readFile(filepath.Join(Root, strconv.Itoa(pid), "maps"))
	if err != nil {
		return nil, fmt.Errorf("read the mappings of PID %d: %w", pid, err)
	}
	var out []Mapping
	seen := map[string]bool{}
	for len(data) > 0 {
		line, rest, _ := bytes.Cut(data, []byte{'\n'})
		data = rest
		m, ok := parseSharedWritable(string(line))
		if ok && !seen[m.Path] {
			seen[m.Path] = true
			out = append(out, m)
		}
	}
	return out, nil
}

// parseSharedWritable parses one line of /proc/PID/maps,
//
//	7f7c8d597000-7f7c8d59f000 rw-s 00000000 fe:00 9986067    /tmp/hsperfdata_root/42
//
// and reports whether it maps a file shared and writable. The path is
// what follows the first five fields (it may contain spaces).
func parseSharedWritable(line string) (Mapping, bool) {
	rest := line
	var f [5]string
	for i := range f {
		rest = strings.TrimLeft(rest, " ")
		j := strings.IndexByte(rest, ' ')
		if j < 0 {
			return Mapping{}, false
		}
		f[i], rest = rest[:j], rest[j:]
	}
	path := strings.TrimLeft(rest, " ")
	if len(f[1]) != 4 || f[1][1] != 'w' || f[1][3] != 's' || !strings.HasPrefix(path, "/") ||
		strings.HasSuffix(path, " (deleted)") || f[4] == "0" {
		return Mapping{}, false
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return Mapping{}, false
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil {
		return Mapping{}, false
	}
	return Mapping{Start: start, End: end, Path: path}, true
}
