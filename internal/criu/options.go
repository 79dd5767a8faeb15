package criu

import (
	"time"

	"fmt"
	"os"
	"syscall"
)

// NetworkLock is how CRIU isolates a process's TCP connections from the
// network while it dumps or restores them.
type NetworkLock string

// Network lock methods. The zero value lets the Client pick the best one
// available (nftables with CRIU ≥ 4, which needs no iptables binary).
const (
	NetworkLockAuto     NetworkLock = ""
	NetworkLockNFTables NetworkLock = "nftables"
	NetworkLockIPTables NetworkLock = "iptables"
	NetworkLockSkip     NetworkLock = "skip"
)

// Valid reports whether l names a known method.
func (l NetworkLock) Valid() bool {
	switch l {
	case NetworkLockAuto, NetworkLockNFTables, NetworkLockIPTables, NetworkLockSkip:
		return true
	}
	return false
}

// DumpOptions say what to dump and how. They are Cedana's own terms;
// CRIU's RPC types never leave this package.
type DumpOptions struct {
	// PID is the root of the process tree to dump. Its descendants are
	// dumped with it.
	PID int
	// ImagesDir is an existing, empty directory that receives the images.
	ImagesDir string
	// LogDir is an existing directory for CRIU's log; LogFile is the log's
	// base name in it (CRIU allows no subdirectories).
	LogDir  string
	LogFile string

	// LeaveRunning resumes the tree after the dump instead of killing it.
	LeaveRunning bool
	// LeaveStopped keeps the tree frozen (SIGSTOP) after a successful dump,
	// so that the caller can persist the images before it kills the tree,
	// or resume it if persisting fails. Ignored when LeaveRunning is set.
	LeaveStopped bool

	// TCPEstablished dumps established TCP connections (TCP repair mode).
	TCPEstablished bool
	// ShellJob allows a tree attached to a terminal, or whose session or
	// process group leader is outside the tree.
	ShellJob bool
	// ExtUnixSockets allows unix sockets connected to peers outside the
	// tree; on restore the peer must exist again.
	ExtUnixSockets bool
	// FileLocks dumps POSIX/flock file locks.
	FileLocks bool
	// LinkRemap allows files that were unlinked-but-open or hard-linked in
	// ways CRIU must remap.
	LinkRemap bool
	// GhostLimit is the largest deleted-but-open file CRIU copies into the
	// images, in bytes. 0 keeps CRIU's default (1 MiB).
	GhostLimit uint64
	// NetworkLock is the method used to lock TCP connections.
	NetworkLock NetworkLock
	// ExternalTTYs are terminals outside the tree ("tty[rdev:dev]" keys, see
	// TTYKey); a restore must hand CRIU a terminal for each of them.
	ExternalTTYs []string
}

// RestoreOptions say how to bring a tree back from images.
type RestoreOptions struct {
	// ImagesDir holds the images written by a dump.
	ImagesDir string
	// LogDir and LogFile: as in DumpOptions.
	LogDir  string
	LogFile string

	// The following must match what the dump used.
	TCPEstablished bool
	ShellJob       bool
	ExtUnixSockets bool
	FileLocks      bool
	LinkRemap      bool
	NetworkLock    NetworkLock

	// Detach restores the tree as a sibling of CRIU: a child of the calling
	// process, which may wait for it or exit and leave it to init.
	Detach bool
	// TTYs maps the dump's external terminal keys to the terminal that
	// replaces each of them (usually the restoring user's terminal).
	TTYs map[string]*os.File
	// LeaveStopped leaves the restored tree stopped (SIGSTOP): a
	// migration resumes it only once the job's ownership has moved.
	LeaveStopped bool

	// The following are honoured by RestoreDetached only (template
	// clones).

	// JoinNetNS is the path of an existing network namespace (e.g.
	// /run/netns/NAME) the tree is restored into; "" keeps the caller's.
	JoinNetNS string
	// InheritFiles replaces regular files the tree had open, by the
	// absolute path the dump recorded, with the given open files (each
	// clone of a template writes its own log).
	InheritFiles map[string]*os.File
	// Lazy restores the tree before its memory: a `criu lazy-pages`
	// server hands the pages in on first touch (userfaultfd) and in the
	// background from the images (see lazy.go).
	Lazy bool
	// LazyPageServer, with Lazy, is the address (host:port) of the page
	// server the lazy-pages daemon pulls the memory from — a lazy
	// migration's source (see DumpLazy) — instead of ImagesDir's pages.
	LazyPageServer string
}

// DumpResult reports on a successful dump.
type DumpResult struct {
	// LogPath is the path of CRIU's log for this dump.
	LogPath string
	// Stats are CRIU's own measurements; nil if CRIU wrote none.
	Stats *DumpStats
	// CPU is the CPU time (user and system) the CRIU process used, with
	// the children it waited for; 0 when unknown.
	CPU time.Duration
}

// DumpStats are CRIU's measurements of a dump (from its stats-dump image).
type DumpStats struct {
	FreezingTimeUS uint32
	FrozenTimeUS   uint32
	MemdumpTimeUS  uint32
	MemwriteTimeUS uint32
	PagesScanned   uint64
	PagesWritten   uint64
}

// RestoreResult reports on a successful restore.
type RestoreResult struct {
	// PID is the PID of the restored tree's root.
	PID int
	// LogPath is the path of CRIU's log for this restore.
	LogPath string
}

// TTYKey returns CRIU's key for an external terminal ("tty[rdev:dev]", in
// hex) from the terminal's path, e.g. /proc/PID/fd/0 or /dev/pts/3.
func TTYKey(path string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", fmt.Errorf("stat terminal %s: %w", path, err)
	}
	return fmt.Sprintf("tty[%x:%x]", st.Rdev, st.Dev), nil
}
