package archive

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
)

// FormatVersion is the version of the archive layout and manifest schema
// written by this build. Readers accept every version from
// MinReadableVersion up to FormatVersion and refuse anything newer, so an
// old binary never misreads an archive from the future.
//
// History:
//
//	1: initial format (zip; manifest.json; images/ and files/ entries),
//	   each entry with the SHA-256 of its content (sha256).
//	2: each entry with the SHA-256 of its stored (compressed) bytes
//	   (stored_sha256) instead of the SHA-256 of its content. Hashing the
//	   stored bytes is one pass over fewer bytes, is checked before
//	   anything decoded from them is used, and pins the content just as
//	   firmly (a zstd stream decodes to exactly one content).
//	3: each entry also with the XXH3-128 of its stored bytes
//	   (stored_xxh3), which a restore checks instead of the SHA-256:
//	   as sure a check against damage, for a fifth of the CPU.
const FormatVersion = 3

// MinReadableVersion is the oldest format version this build can restore.
const MinReadableVersion = 1

// ManifestName is the name of the manifest entry inside the zip.
const ManifestName = "manifest.json"

// Entry name prefixes. Every entry other than the manifest lives below one
// of them; readers refuse anything else.
const (
	ImagesPrefix    = "images/"    // CRIU image files, flat (no subdirectories)
	FilesPrefix     = "files/"     // contents of carried files, named by index
	ContainerPrefix = "container/" // container config and rootfs changes, flat
)

// Manifest describes a checkpoint archive. It is stored as JSON in the
// entry "manifest.json", written last so that it can hold the digest of
// every other entry.
//
// Compatibility rules: fields are only ever added. A reader ignores fields
// it does not know only within the same FormatVersion; a change that an
// older reader would misinterpret bumps FormatVersion.
type Manifest struct {
	// FormatVersion is the archive format version (see FormatVersion).
	FormatVersion int `json:"format_version"`
	// Kind is what was checkpointed: "process", "docker" or "runc".
	Kind string `json:"kind"`
	// Container describes the container, for kinds other than "process".
	Container *ContainerInfo `json:"container,omitempty"`
	// Created is when the dump finished, in UTC.
	Created time.Time `json:"created"`
	// Cedana is the version of the cedana binary that wrote the archive.
	Cedana string `json:"cedana_version"`
	// CRIU is the version of CRIU that produced the images.
	CRIU CRIUInfo `json:"criu"`
	// Host describes the machine the checkpoint was taken on.
	Host HostInfo `json:"host"`
	// RootPID is the PID of the top of the dumped process tree.
	RootPID int `json:"root_pid"`
	// PIDNamespace is true when the tree had its own PID namespace (its
	// root was the namespace's init): a restore creates a new namespace, so
	// the PIDs above need not be free.
	PIDNamespace bool `json:"pid_namespace,omitempty"`
	// Processes is the dumped tree, root first, then in breadth-first order.
	Processes []Process `json:"processes"`
	// Options records the choices made for CRIU at dump time; restore
	// reuses them (e.g. a shell job must also be restored as one).
	Options DumpOptions `json:"options"`
	// Entries lists every entry of the archive except the manifest, with
	// its uncompressed size and SHA-256.
	Entries []EntryInfo `json:"entries"`
	// CarriedFiles are files the processes had open for writing whose
	// contents travel in the archive (entries under files/).
	CarriedFiles []CarriedFile `json:"carried_files,omitempty"`
	// Stats holds CRIU's own timings and counters for the dump, when known.
	Stats *DumpStats `json:"stats,omitempty"`
}

// ContainerInfo describes a checkpointed container. Its configuration and
// the changes to its writable layer are entries under container/.
type ContainerInfo struct {
	// Runtime is "docker" or "runc".
	Runtime string `json:"runtime"`
	// ID is the container's ID at dump time.
	ID string `json:"id"`
	// Name is the container's name (docker).
	Name string `json:"name,omitempty"`
	// Image and ImageID identify the image it was created from (docker).
	Image   string `json:"image,omitempty"`
	ImageID string `json:"image_id,omitempty"`
	// Bundle is the OCI bundle path at dump time (runc).
	Bundle string `json:"bundle,omitempty"`
}

// CRIUInfo identifies the CRIU that wrote the images.
type CRIUInfo struct {
	// Version is CRIU's version as major*10000+minor*100+sublevel.
	Version int `json:"version"`
	// VersionString is the human form, e.g. "4.2.1".
	VersionString string `json:"version_string"`
}

// HostInfo describes the machine where a checkpoint was taken.
type HostInfo struct {
	Hostname string `json:"hostname"`
	Kernel   string `json:"kernel"` // uname -r
	Arch     string `json:"arch"`   // GOARCH, e.g. "amd64"
}

// Process is one task of the dumped tree, as seen just before the dump.
type Process struct {
	PID int `json:"pid"`
	// NSPID is the process's PID inside the tree's own PID namespace,
	// when it has one and it differs from PID (a restore finds the
	// process by it).
	NSPID   int      `json:"ns_pid,omitempty"`
	PPID    int      `json:"ppid"`
	PGID    int      `json:"pgid"`
	SID     int      `json:"sid"`
	Name    string   `json:"name"` // comm
	Exe     string   `json:"exe,omitempty"`
	Cmdline []string `json:"cmdline,omitempty"`
	Cwd     string   `json:"cwd,omitempty"`
	UID     int      `json:"uid"`
	GID     int      `json:"gid"`
	// RSS is the resident set size in bytes.
	RSS uint64 `json:"rss_bytes"`
	// Stopped is true for a process that was stopped (SIGSTOP, state T)
	// when the tree was dumped: a restore leaves it stopped.
	Stopped bool `json:"stopped,omitempty"`
	// TTY is the controlling terminal's device path, if any.
	TTY     string       `json:"tty,omitempty"`
	Files   []OpenFile   `json:"files,omitempty"`
	Sockets []SocketInfo `json:"sockets,omitempty"`
}

// OpenFile is one file descriptor of a process.
type OpenFile struct {
	FD int `json:"fd"`
	// Path is the fd's target as /proc/PID/fd shows it (a path, or a
	// pseudo name such as "pipe:[123]" or "socket:[456]").
	Path string `json:"path"`
	// Type is "file", "dir", "pipe", "socket", "tty", "device", "anon" or
	// "deleted" (a regular file that was unlinked while open).
	Type string `json:"type"`
	// Flags are the open flags from /proc/PID/fdinfo (octal there).
	Flags int `json:"flags"`
	// Pos is the file offset.
	Pos int64 `json:"pos"`
	// Locks are the file locks the process held on the file, as fdinfo
	// lists them ("POSIX  ADVISORY  WRITE 42 fe:00:1234 0 EOF"). A restore
	// checks that the POSIX ones are held again (CRIU can drop them).
	Locks []string `json:"locks,omitempty"`
}

// SocketInfo describes an inet or unix socket held by a process.
type SocketInfo struct {
	FD     int    `json:"fd"`
	Family string `json:"family"` // "tcp", "tcp6", "udp", "udp6", "unix"
	State  string `json:"state"`  // e.g. "LISTEN", "ESTABLISHED"
	Local  string `json:"local,omitempty"`
	Remote string `json:"remote,omitempty"`
	Inode  uint64 `json:"inode"`
}

// DumpOptions are the CRIU-related choices made for a dump, in Cedana's
// own terms (never CRIU's protobuf types).
type DumpOptions struct {
	TCPEstablished bool   `json:"tcp_established,omitempty"`
	ShellJob       bool   `json:"shell_job,omitempty"`
	ExtUnixSockets bool   `json:"ext_unix_sockets,omitempty"`
	FileLocks      bool   `json:"file_locks,omitempty"`
	LinkRemap      bool   `json:"link_remap,omitempty"`
	GhostLimit     uint64 `json:"ghost_limit,omitempty"`
	NetworkLock    string `json:"network_lock,omitempty"` // "nftables", "iptables", "skip"
	LeaveRunning   bool   `json:"leave_running,omitempty"`
	// ExternalTTYs are the terminals the tree was attached to, as CRIU's
	// "tty[rdev:dev]" keys; a restore attaches them to its own terminal.
	ExternalTTYs []string `json:"external_ttys,omitempty"`
	// Streamable says a restore may feed the memory pages to CRIU
	// through a pipe (criu --stream): false when the tree had hugetlb
	// mappings, whose pages CRIU reads back at offsets.
	Streamable bool `json:"streamable,omitempty"`
	// LazyPages says the tree's private memory is not in the archive: a
	// lazy migration's source served it to the one restore that pulled
	// it (--lazy-pages). Such an archive restores only that way.
	LazyPages bool `json:"lazy_pages,omitempty"`
}

// EntryInfo is the integrity record of one archive entry.
type EntryInfo struct {
	Name string `json:"name"`
	Size int64  `json:"size"` // uncompressed bytes
	// StoredSHA256 is the SHA-256 (hex) of the entry's bytes as stored in
	// the zip (its compressed stream). Format 2 and later.
	StoredSHA256 string `json:"stored_sha256,omitempty"`
	// StoredXXH3 is the XXH3-128 (hex, canonical: high half first) of
	// the same bytes. Format 3 and later. A restore checks it rather
	// than StoredSHA256; Reader.Verify checks both.
	StoredXXH3 string `json:"stored_xxh3,omitempty"`
	// StoredCRC32C is the CRC-32C (hex) of the stored bytes, which
	// format 1 archives may record (a flip in bits a zstd decoder ignores
	// would otherwise pass their content SHA-256).
	StoredCRC32C string `json:"stored_crc32c,omitempty"`
	// SHA256 is the SHA-256 (hex) of the uncompressed content: format 1
	// only.
	SHA256 string `json:"sha256,omitempty"`
}

// Digest returns the entry's SHA-256 as recorded: of its stored bytes
// (format 2 and later) or of its content (format 1).
func (e EntryInfo) Digest() string {
	if e.StoredSHA256 != "" {
		return e.StoredSHA256
	}
	return e.SHA256
}

// CarriedFile is a file the process had open for writing whose content is
// stored in the archive so that a restore on another machine with the same
// root filesystem finds it.
type CarriedFile struct {
	// Path is the absolute path the process had open.
	Path string `json:"path"`
	// Entry is the archive entry holding the content ("files/N").
	Entry string `json:"entry"`
	// Size is the file's size at dump time.
	Size int64 `json:"size"`
	// Mode is the file's permission bits.
	Mode uint32 `json:"mode"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
}

// DumpStats are CRIU's own measurements of a dump (from stats-dump).
type DumpStats struct {
	FreezingTimeUS uint32 `json:"freezing_time_us"`
	FrozenTimeUS   uint32 `json:"frozen_time_us"`
	MemdumpTimeUS  uint32 `json:"memdump_time_us"`
	MemwriteTimeUS uint32 `json:"memwrite_time_us"`
	PagesWritten   uint64 `json:"pages_written"`
}

// TotalSize returns the total uncompressed size of every entry.
func (m *Manifest) TotalSize() int64 {
	var n int64
	for _, e := range m.Entries {
		n += e.Size
	}
	return n
}

// CurrentHost describes the machine this runs on.
func CurrentHost() HostInfo {
	h := HostInfo{Arch: runtime.GOARCH}
	h.Hostname, _ = os.Hostname()
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		b := make([]byte, 0, len(u.Release))
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b = append(b, byte(c))
		}
		h.Kernel = string(b)
	}
	return h
}

// ImagesSize returns the total uncompressed size of the CRIU images.
func (m *Manifest) ImagesSize() int64 {
	var n int64
	for _, e := range m.Entries {
		if len(e.Name) > len(ImagesPrefix) && e.Name[:len(ImagesPrefix)] == ImagesPrefix {
			n += e.Size
		}
	}
	return n
}

// ParseManifest decodes and validates a manifest. It refuses unknown
// format versions and structurally invalid content with a descriptive
// error; it never panics on any input.
func ParseManifest(data []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest is not valid JSON: %v", ErrCorrupt, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}
