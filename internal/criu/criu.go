// Package criu is the only part of Cedana that talks to CRIU.
//
// It drives CRIU through its RPC interface (`criu swrk`, via go-criu), or,
// for streamed dumps and restores, through the `criu` command with
// --stream, serving CRIU's image-streamer protocol itself (streamer.go,
// stream.go). For runc, which runs CRIU itself, it provides the bridge
// runc runs as its CRIU, which turns runc's RPC requests into streamed
// `criu` command lines (bridge.go, bridge_args.go). It owns the mapping from Cedana's option structs to CRIU's
// options, so that no CRIU type leaks into the rest of the code. When CRIU fails,
// the returned *Error carries the relevant lines of CRIU's log, the log's
// path, and a hint that tells the user how to fix the problem when the
// cause is known.
package criu

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	gocriu "github.com/checkpoint-restore/go-criu/v8"
	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"github.com/checkpoint-restore/go-criu/v8/stats"
)

// MinVersion is the oldest CRIU that Cedana accepts: kernels from 6.13 on
// split the vDSO in a way only CRIU ≥ 4.1 understands, and 6.16 changed
// socket options in a way only 4.2 handles.
const MinVersion = 40200

// ErrNotFound means no CRIU binary could be found.
var ErrNotFound = errors.New("criu not found")

// Client runs CRIU operations. The zero value is not usable; call New.
// It is safe for concurrent use.
type Client struct {
	path string

	// The version is cached per binary (path, size, mtime): asking costs a
	// `criu swrk` process, and a daemon dumps many times a minute.
	mu      sync.Mutex
	verKey  string
	version int
}

// New returns a Client that runs the CRIU binary at path, or the one on
// PATH when path is empty.
func New(path string) *Client {
	if path == "" {
		path = "criu"
	}
	return &Client{path: path}
}

// systemDirs are where CRIU is looked for when "criu" is not on PATH: a
// daemon started by an init system or sudo often runs with a PATH that
// lacks the sbin directories, /usr/local/sbin (where `make setup` puts
// its CRIU) above all.
var systemDirs = []string{"/usr/local/sbin", "/usr/sbin", "/sbin"}

// Path returns the resolved path of the CRIU binary, or ErrNotFound.
func (c *Client) Path() (string, error) {
	p, err := exec.LookPath(c.path)
	if err == nil {
		return p, nil
	}
	if c.path == "criu" {
		for _, d := range systemDirs {
			if p, err := exec.LookPath(filepath.Join(d, "criu")); err == nil {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("%w (looked for %q on PATH and in %s): run `make setup` to install CRIU ≥ %s",
		ErrNotFound, c.path, strings.Join(systemDirs, ", "), FormatVersion(MinVersion))
}

func (c *Client) swrk() (*gocriu.Criu, error) {
	p, err := c.Path()
	if err != nil {
		return nil, err
	}
	g := gocriu.MakeCriu()
	g.SetCriuPath(p)
	return g, nil
}

// Version returns CRIU's version as major*10000+minor*100+sublevel.
func (c *Client) Version() (int, error) {
	p, err := c.Path()
	if err != nil {
		return 0, err
	}
	key := p
	if st, err := os.Stat(p); err == nil {
		key = fmt.Sprintf("%s:%d:%d", p, st.Size(), st.ModTime().UnixNano())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.verKey == key && c.version > 0 {
		return c.version, nil
	}
	g, err := c.swrk()
	if err != nil {
		return 0, err
	}
	v, err := g.GetCriuVersion()
	if err != nil {
		return 0, fmt.Errorf("ask criu for its version: %w", err)
	}
	c.verKey, c.version = key, v
	return v, nil
}

// CheckVersion returns the version, or an error saying what to do when the
// installed CRIU is too old for this kernel.
func (c *Client) CheckVersion() (int, error) {
	v, err := c.Version()
	if err != nil {
		return 0, err
	}
	if v < MinVersion {
		return v, fmt.Errorf("criu %s is too old: this kernel needs CRIU ≥ %s; run `make setup`", FormatVersion(v), FormatVersion(MinVersion))
	}
	return v, nil
}

// FormatVersion turns 40201 into "4.2.1".
func FormatVersion(v int) string {
	return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
}

// Dump checkpoints the tree rooted at o.PID into o.ImagesDir.
func (c *Client) Dump(o DumpOptions) (*DumpResult, error) {
	g, err := c.swrk()
	if err != nil {
		return nil, err
	}
	imgDir, logDir, err := openDirs(o.ImagesDir, o.LogDir)
	if err != nil {
		return nil, err
	}
	defer imgDir.Close()
	defer logDir.Close()

	opts := baseOpts(imgDir, logDir, o.LogFile, o.shared())
	opts.Pid = ptr(int32(o.PID))
	opts.LeaveRunning = ptr(o.LeaveRunning)
	opts.External = o.ExternalTTYs
	if o.LeaveStopped && !o.LeaveRunning {
		opts.LeaveStopped = ptr(true)
	}
	if o.GhostLimit > 0 {
		lim := o.GhostLimit
		if lim > 1<<32-1 {
			lim = 1<<32 - 1
		}
		opts.GhostLimit = ptr(uint32(lim))
	}
	logPath := filepath.Join(o.LogDir, o.LogFile)
	// Start `criu swrk` first, so that its CPU time can be read once it
	// has been reaped (see usage.go).
	if err := g.Prepare(); err != nil {
		return nil, newError("dump", err, logPath)
	}
	cmd := swrkCmd(g)
	err = g.Dump(opts, nil)
	if cerr := g.Cleanup(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, newError("dump", err, logPath)
	}
	res := &DumpResult{LogPath: logPath, Stats: dumpStats(logDir)}
	if cmd != nil {
		res.CPU = cpuOf(cmd.ProcessState)
	}
	return res, nil
}

// dumpStats reads the stats-dump file CRIU leaves in its work directory,
// or returns nil.
func dumpStats(workDir *os.File) *DumpStats {
	s, err := stats.CriuGetDumpStats(workDir)
	if err != nil {
		return nil
	}
	return &DumpStats{
		FreezingTimeUS: s.GetFreezingTime(),
		FrozenTimeUS:   s.GetFrozenTime(),
		MemdumpTimeUS:  s.GetMemdumpTime(),
		MemwriteTimeUS: s.GetMemwriteTime(),
		PagesScanned:   s.GetPagesScanned(),
		PagesWritten:   s.GetPagesWritten(),
	}
}

// Restore brings back the tree saved in o.ImagesDir.
func (c *Client) Restore(o RestoreOptions) (*RestoreResult, error) {
	g, err := c.swrk()
	if err != nil {
		return nil, err
	}
	imgDir, logDir, err := openDirs(o.ImagesDir, o.LogDir)
	if err != nil {
		return nil, err
	}
	defer imgDir.Close()
	defer logDir.Close()

	opts := baseOpts(imgDir, logDir, o.LogFile, o.shared())
	opts.RstSibling = ptr(o.Detach)
	if o.LeaveStopped {
		opts.LeaveStopped = ptr(true)
	}
	for key, f := range o.TTYs {
		g.AddInheritFd(key, f)
	}
	n := &restoreNotify{}
	logPath := filepath.Join(o.LogDir, o.LogFile)
	if err := g.Restore(opts, n); err != nil {
		return nil, newError("restore", err, logPath)
	}
	return &RestoreResult{PID: int(n.pid), LogPath: logPath}, nil
}

// shared are the options a restore must repeat from its dump.
type shared struct {
	tcpEstablished, shellJob, extUnixSockets, fileLocks, linkRemap bool
	networkLock                                                    NetworkLock
}

func (o DumpOptions) shared() shared {
	return shared{o.TCPEstablished, o.ShellJob, o.ExtUnixSockets, o.FileLocks, o.LinkRemap, o.NetworkLock}
}

func (o RestoreOptions) shared() shared {
	return shared{o.TCPEstablished, o.ShellJob, o.ExtUnixSockets, o.FileLocks, o.LinkRemap, o.NetworkLock}
}

// baseOpts builds the CRIU options common to dump and restore.
func baseOpts(imgDir, logDir *os.File, logFile string, s shared) *rpc.CriuOpts {
	return &rpc.CriuOpts{
		ImagesDirFd:    ptr(int32(imgDir.Fd())),
		WorkDirFd:      ptr(int32(logDir.Fd())),
		LogFile:        ptr(logFile),
		LogLevel:       ptr(int32(4)), // debug: the context around an error is what explains it
		TcpEstablished: ptr(s.tcpEstablished),
		ShellJob:       ptr(s.shellJob),
		ExtUnixSk:      ptr(s.extUnixSockets),
		FileLocks:      ptr(s.fileLocks),
		LinkRemap:      ptr(s.linkRemap),
		ManageCgroups:  ptr(true),
		NetworkLock:    networkLock(s.networkLock).Enum(),
	}
}

// openDirs opens the images and log directories, whose descriptors CRIU
// receives.
func openDirs(images, logs string) (imgDir, logDir *os.File, err error) {
	if imgDir, err = os.Open(images); err != nil {
		return nil, nil, fmt.Errorf("open images dir: %w", err)
	}
	if logDir, err = os.Open(logs); err != nil {
		imgDir.Close()
		return nil, nil, fmt.Errorf("open log dir: %w", err)
	}
	return imgDir, logDir, nil
}

// restoreNotify records the PID CRIU reports once the tree is restored.
type restoreNotify struct {
	gocriu.NoNotify
	pid int32
}

func (n *restoreNotify) PostRestore(pid int32) error {
	n.pid = pid
	return nil
}

func networkLock(l NetworkLock) rpc.CriuNetworkLockMethod {
	switch l {
	case NetworkLockIPTables:
		return rpc.CriuNetworkLockMethod_IPTABLES
	case NetworkLockSkip:
		return rpc.CriuNetworkLockMethod_SKIP
	default:
		// CRIU 4.x has nftables built in and needs no external binary;
		// iptables is not installed on many hosts.
		return rpc.CriuNetworkLockMethod_NFTABLES
	}
}

func ptr[T any](v T) *T { return &v }

// isExecMissing reports whether err means the binary could not be run.
func isExecMissing(err error) bool {
	return errors.Is(err, exec.ErrNotFound) || errors.Is(err, syscall.ENOENT) ||
		strings.Contains(err.Error(), "executable file not found")
}
