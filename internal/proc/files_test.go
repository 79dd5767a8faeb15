package proc

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// TestMPTCPSockets: of this process's sockets, the MPTCP one is found
// (although /proc/PID/net/tcp lists it like the TCP one) and the TCP and
// unix ones are not; the descriptor stays open in the process.
func TestMPTCPSockets(t *testing.T) {
	mp, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, IPProtoMPTCP)
	if err != nil {
		t.Skipf("skipping: this kernel cannot create an MPTCP socket: %v", err)
	}
	defer unix.Close(mp)
	if err := unix.Bind(mp, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(mp, 1); err != nil {
		t.Fatal(err)
	}
	tcp, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(tcp)
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	defer unix.Close(pair[1])

	pid := os.Getpid()
	fds, err := FDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	got, err := MPTCPSockets(pid, fds, Sockets(pid))
	if errors.Is(err, ErrCannotInspect) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Num != mp {
		t.Fatalf("MPTCP sockets = %+v, want only fd %d", got, mp)
	}
	if _, err := unix.GetsockoptInt(mp, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil {
		t.Fatalf("the MPTCP socket was closed by the inspection: %v", err)
	}
	if none, err := MPTCPSockets(pid, nil, nil); err != nil || none != nil {
		t.Fatalf("no descriptors: %v, %v", none, err)
	}
}

// TestPTYIndex: the master side of a pseudo-terminal reports the index of
// its slave, and the slave's path gives the same index.
func TestPTYIndex(t *testing.T) {
	master, slave, err := pty.Open()
	if err != nil {
		t.Skipf("skipping: no pseudo-terminals here: %v", err)
	}
	defer master.Close()
	defer slave.Close()
	n, ok := PTSIndex(slave.Name())
	if !ok {
		t.Fatalf("PTSIndex(%q) failed", slave.Name())
	}
	fds, err := FDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		switch uintptr(fd.Num) {
		case master.Fd():
			if fd.PTYIndex != n {
				t.Errorf("master fd %d: PTYIndex %d, want %d", fd.Num, fd.PTYIndex, n)
			}
		case slave.Fd():
			if fd.PTYIndex != -1 {
				t.Errorf("slave fd %d: PTYIndex %d, want -1", fd.Num, fd.PTYIndex)
			}
		}
	}
	for _, bad := range []string{"/dev/pts/ptmx", "/dev/ptmx", "/dev/pts/", "/dev/pts/-1", "/dev/tty1"} {
		if _, ok := PTSIndex(bad); ok {
			t.Errorf("PTSIndex(%q) succeeded", bad)
		}
	}
}

// TestFDLocks: a POSIX lock and a flock held by this process show on the
// descriptors they were taken through, and nowhere else.
func TestFDLocks(t *testing.T) {
	dir := t.TempDir()
	posix, err := os.Create(dir + "/posix")
	if err != nil {
		t.Fatal(err)
	}
	defer posix.Close()
	flocked, err := os.Create(dir + "/flock")
	if err != nil {
		t.Fatal(err)
	}
	defer flocked.Close()
	plain, err := os.Create(dir + "/plain")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(posix.Fd(), unix.F_SETLK, &lk); err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(flocked.Fd()), unix.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	fds, err := FDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	want := map[uintptr]string{posix.Fd(): "POSIX", flocked.Fd(): "FLOCK", plain.Fd(): ""}
	for _, fd := range fds {
		kind, ok := want[uintptr(fd.Num)]
		if !ok {
			continue
		}
		delete(want, uintptr(fd.Num))
		switch {
		case kind == "" && len(fd.Locks) != 0:
			t.Errorf("fd %d (%s) has no lock but shows %q", fd.Num, fd.Path, fd.Locks)
		case kind != "" && (len(fd.Locks) != 1 || !strings.HasPrefix(fd.Locks[0], kind)):
			t.Errorf("fd %d (%s): locks %q, want one %s lock", fd.Num, fd.Path, fd.Locks, kind)
		}
	}
	if len(want) > 0 {
		t.Errorf("descriptors not listed: %v", want)
	}
}

// TestSharedWritableMappings: a file this process maps shared and
// writable is listed (once, with its map_files link reaching its
// content); private or read-only mappings, and deleted files, are not.
func TestSharedWritableMappings(t *testing.T) {
	dir := t.TempDir()
	mapFile := func(name string, prot, flags int) []byte {
		t.Helper()
		f, err := os.Create(dir + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(strings.Repeat(name, 4096/len(name)+1)[:4096]); err != nil {
			t.Fatal(err)
		}
		b, err := unix.Mmap(int(f.Fd()), 0, 4096, prot, flags)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = unix.Munmap(b) })
		return b
	}
	shared := mapFile("shared with space", unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	mapFile("private", unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	mapFile("readonly", unix.PROT_READ, unix.MAP_SHARED)
	mapFile("deleted", unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err := os.Remove(dir + "/deleted"); err != nil {
		t.Fatal(err)
	}
	copy(shared, "changed in memory")

	maps, err := SharedWritableMappings(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var mine []Mapping
	for _, m := range maps {
		if strings.HasPrefix(m.Path, dir+"/") {
			mine = append(mine, m)
		}
	}
	if len(mine) != 1 || mine[0].Path != dir+"/shared with space" {
		t.Fatalf("shared writable mappings under %s: %+v, want only \"shared with space\"", dir, mine)
	}
	data, err := os.ReadFile(mine[0].MapFile(os.Getpid()))
	if err != nil {
		t.Skipf("skipping the map_files check: %v", err)
	}
	if !strings.HasPrefix(string(data), "changed in memory") {
		t.Errorf("map_files reads %q…, not the mapped file", data[:20])
	}
}

func TestParseSharedWritable(t *testing.T) {
	for line, want := range map[string]string{
		"7f7c8d597000-7f7c8d59f000 rw-s 00000000 fe:00 9986067                    /tmp/hsperfdata_root/42": "/tmp/hsperfdata_root/42",
		"7f7c8d597000-7f7c8d59f000 rw-s 00000000 fe:00 9986067 /a b/c":                                     "/a b/c",
		"7f7c8d597000-7f7c8d59f000 rw-p 00000000 fe:00 9986067 /usr/lib/x.so":                              "",
		"7f7c8d597000-7f7c8d59f000 r--s 00000000 fe:00 9986067 /var/cache/x":                               "",
		"7f7c8d597000-7f7c8d59f000 rw-s 00000000 00:01 2048 /dev/zero (deleted)":                           "",
		"7f7c8d597000-7f7c8d59f000 rw-s 00000000 00:00 0 ":                                                 "",
		"7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]":                 "",
		"garbage": "",
		"":        "",
	} {
		m, ok := parseSharedWritable(line)
		if got := map[bool]string{true: m.Path}[ok]; got != want {
			t.Errorf("parseSharedWritable(%q) = %q, %v; want %q", line, m.Path, ok, want)
		}
	}
}

// TestParsePOSIXLock: fdinfo and /proc/locks lines, and what is not a
// POSIX lock.
func TestParsePOSIXLock(t *testing.T) {
	for _, c := range []struct {
		line string
		want POSIXLock
		ok   bool
	}{
		{"POSIX  ADVISORY  WRITE 42 fe:00:1234 120 120", POSIXLock{Write: true, Inode: "fe:00:1234", Start: 120, End: 120}, true},
		{"2: POSIX  ADVISORY  READ 42 fe:00:1234 128 EOF", POSIXLock{Inode: "fe:00:1234", Start: 128, End: -1}, true},
		{"FLOCK  ADVISORY  WRITE 42 fe:00:1234 0 EOF", POSIXLock{}, false},
		{"OFDLCK ADVISORY  READ -1 fe:00:1234 0 EOF", POSIXLock{}, false},
		{"POSIX  ADVISORY  WRITE 42 fe:00:1234 9 3", POSIXLock{}, false},
		{"POSIX  ADVISORY  WRITE 42 fe:00:1234 -1 3", POSIXLock{}, false},
		{"POSIX  MANDATORY WRITE 42 fe:00:1234 0 0", POSIXLock{}, false},
		{"", POSIXLock{}, false},
	} {
		got, ok := ParsePOSIXLock(c.line)
		if ok != c.ok || (ok && got != c.want) {
			t.Errorf("ParsePOSIXLock(%q) = %+v, %v; want %+v, %v", c.line, got, ok, c.want, c.ok)
		}
	}
}
