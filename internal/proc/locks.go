package proc

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// POSIXLock is a POSIX (fcntl) record lock as /proc/PID/fdinfo lists it.
type POSIXLock struct {
	// Write is true for an exclusive (F_WRLCK) lock, false for a shared one.
	Write bool
	// Inode is the "major:minor:inode" of the locked file.
	Inode string
	// Start and End are the first and last locked byte; End is -1 for a
	// lock that runs to the end of the file, however long it grows.
	Start, End int64
}

// ParsePOSIXLock reads a lock line as fdinfo shows it, e.g.
// "POSIX  ADVISORY  WRITE 42 fe:00:1234 120 120" (an optional "N:"
// ordinal first, as in /proc/locks). ok is false for every other kind of
// lock (OFD, flock, leases) and for lines it does not understand.
func ParsePOSIXLock(line string) (l POSIXLock, ok bool) {
	f := strings.Fields(line)
	if len(f) > 0 && strings.HasSuffix(f[0], ":") {
		f = f[1:]
	}
	if len(f) != 7 || f[0] != "POSIX" || f[1] != "ADVISORY" {
		return l, false
	}
	switch f[2] {
	case "WRITE":
		l.Write = true
	case "READ":
	default:
		return l, false
	}
	l.Inode = f[4]
	var err error
	if l.Start, err = strconv.ParseInt(f[5], 10, 64); err != nil || l.Start < 0 {
		return l, false
	}
	if f[6] == "EOF" {
		l.End = -1
	} else if l.End, err = strconv.ParseInt(f[6], 10, 64); err != nil || l.End < l.Start {
		return l, false
	}
	return l, true
}

// Flock is the lock as fcntl(2) takes it (F_SETLK, F_GETLK).
func (l POSIXLock) Flock() unix.Flock_t {
	lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: l.Start}
	if l.Write {
		lk.Type = unix.F_WRLCK
	}
	if l.End >= 0 {
		lk.Len = l.End - l.Start + 1 // 0: to the end of the file
	}
	return lk
}

// String describes the lock as a person reads it.
func (l POSIXLock) String() string {
	kind, end := "shared", strconv.FormatInt(l.End, 10)
	if l.Write {
		kind = "exclusive"
	}
	if l.End < 0 {
		end = "EOF"
	}
	return fmt.Sprintf("%s POSIX lock, bytes %d-%s", kind, l.Start, end)
}

// HoldsPOSIXLock reports whether process pid holds lock l on the file
// open as its descriptor fd.
func HoldsPOSIXLock(pid, fd int, l POSIXLock) bool {
	_, _, _, locks := fdinfo(pid, fd)
	for _, line := range locks {
		if got, ok := ParsePOSIXLock(line); ok && got.Write == l.Write && got.Start == l.Start && got.End == l.End {
			return true
		}
	}
	return false
}
