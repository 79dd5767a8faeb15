package store

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// LockedError says another process holds the store file. It matches
// ErrLocked.
type LockedError struct {
	Path string // the store file
	PID  int    // the holder, or 0 when it cannot be found
}

func (e *LockedError) Error() string {
	who := "another cedana daemon"
	if e.PID > 0 {
		who = fmt.Sprintf("another cedana daemon (PID %d)", e.PID)
	}
	return fmt.Sprintf("state store %s is locked by %s: stop it first, or give this one a different state directory",
		e.Path, who)
}

// Is makes errors.Is(err, ErrLocked) true.
func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// lockHolder returns the PID that holds a flock on path, from /proc/locks,
// or 0 when it cannot tell. It is best effort: the PID is as seen from this
// PID namespace, and 0 if the holder is outside it.
func lockHolder(path string) int {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer f.Close()
	return findLockHolder(bufio.NewScanner(f), uint64(st.Dev), st.Ino)
}

// findLockHolder scans /proc/locks lines such as
//
//	1: FLOCK  ADVISORY  WRITE 4711 fd:01:393240 0 EOF
//
// for a granted flock on the file with device dev and inode ino. Waiters,
// marked "->", are skipped.
func findLockHolder(sc *bufio.Scanner, dev, ino uint64) int {
	want := fmt.Sprintf("%02x:%02x:%d", devMajor(dev), devMinor(dev), ino)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[1] != "FLOCK" || f[5] != want {
			continue
		}
		if pid, err := strconv.Atoi(f[4]); err == nil && pid > 0 {
			return pid
		}
	}
	return 0
}

// devMajor and devMinor split a Linux dev_t as glibc's gnu_dev_major/minor.
func devMajor(dev uint64) uint64 { return (dev>>8)&0xfff | (dev>>32)&^uint64(0xfff) }
func devMinor(dev uint64) uint64 { return dev&0xff | (dev>>12)&^uint64(0xff) }
