package criu

import (
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A lazily restored tree must never run without its memory. When the
// lazy-pages daemon dies before it copied every page in, the kernel
// releases the tree's userfaultfds with it, unregisters their ranges, and
// a page touched afterwards reads as zeros: the tree runs on with memory
// that is not its own until Cedana, which noticed the death, kills it
// (seen: a job found its memory damaged and wrote so, in the milliseconds
// before it was killed). So Cedana holds a duplicate of each of the tree's
// userfaultfds (pidfd_getfd from the lazy-pages daemon): while one is held
// the ranges stay registered, and a page the dead daemon never sent keeps
// its toucher waiting — killably — until the tree is killed. The
// duplicates are closed as soon as the daemon exits cleanly (every page is
// in: from then on the ranges must behave as plain memory again, and an
// event nobody reads would stall the tree), and after a failed daemon's
// tree was killed (Stop), or uffdHoldMax later at the latest.

// uffdHoldMax bounds how long the duplicates outlive a failed daemon.
const uffdHoldMax = 30 * time.Second

// uffdHold is the duplicates of one lazy-pages daemon's userfaultfds.
type uffdHold struct {
	mu  sync.Mutex
	fds []int
}

// holdFaults duplicates every userfaultfd the lazy-pages daemon pid holds,
// waiting up to wait for it to hold at least want of them (one per
// process of the tree; they arrive over its socket during the restore).
// It returns what it holds; an empty hold (no pidfd_getfd, say) only
// leaves the window it exists to close.
func holdFaults(pid, want int, wait time.Duration) *uffdHold {
	h := &uffdHold{}
	var fds []int
	for deadline := time.Now().Add(wait); ; time.Sleep(2 * time.Millisecond) {
		fds = uffdsOf(pid)
		if len(fds) >= want || time.Now().After(deadline) {
			break
		}
	}
	if len(fds) == 0 {
		return h
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return h
	}
	defer unix.Close(pidfd)
	for _, fd := range fds {
		if dup, err := unix.PidfdGetfd(pidfd, fd, 0); err == nil {
			unix.CloseOnExec(dup)
			h.fds = append(h.fds, dup)
		}
	}
	return h
}

// held is how many userfaultfds h holds.
func (h *uffdHold) held() int {
	if h == nil {
		return 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.fds)
}

// release closes the duplicates (once).
func (h *uffdHold) release() {
	if h == nil {
		return
	}
	h.mu.Lock()
	fds := h.fds
	h.fds = nil
	h.mu.Unlock()
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// uffdsOf lists the descriptors of pid that are userfaultfds.
func uffdsOf(pid int) []int {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || target != "anon_inode:[userfaultfd]" {
			continue
		}
		if fd, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, fd)
		}
	}
	return out
}
