package criu

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Streamed operations run the `criu` command rather than `criu swrk`:
// CRIU 4.2 has no RPC option for --stream, and swrk given "stream" through
// a configuration file aborts. The command-line options below mirror what
// baseOpts sets over RPC, so both paths dump and restore alike.

// DumpStreamed checkpoints the tree rooted at o.PID like Dump, but hands
// every image to sink as CRIU produces it instead of writing it into
// o.ImagesDir (which must still exist: it holds the streamer's socket, and
// CRIU writes its stats there). sink is called once per image, from its
// own goroutine, concurrently with other images (CRIU writes a pagemap and
// its pages at the same time); it must read r to EOF, and a sink that
// stops reading stalls CRIU while the tree is frozen.
//
// If sink fails, the error tells two cases apart. While CRIU still writes
// the image, CRIU sees a broken pipe and fails; it resumes the tree
// itself, and the error is an *Error explaining CRIU's failure. But CRIU
// may have written the whole image into the pipe already, and then it
// succeeds: with o.LeaveStopped the tree stays stopped, and the error
// wraps ErrSinkFailed — the caller must resume the tree.
func (c *Client) DumpStreamed(o DumpOptions, sink func(name string, r io.Reader) error) (*DumpResult, error) {
	p, err := c.Path()
	if err != nil {
		return nil, err
	}
	srv, err := listenImages(o.ImagesDir, false)
	if err != nil {
		return nil, err
	}
	srv.handle = dumpHandler(sink)
	srv.serve()

	args := []string{"dump", "--stream", "-t", strconv.Itoa(o.PID)}
	args = append(args, commonArgs(srv.dirPath, o.LogDir, o.LogFile, o.shared())...)
	switch {
	case o.LeaveRunning:
		args = append(args, "--leave-running")
	case o.LeaveStopped:
		args = append(args, "--leave-stopped")
	}
	if o.GhostLimit > 0 {
		args = append(args, "--ghost-limit", strconv.FormatUint(min(o.GhostLimit, 1<<32-1), 10))
	}
	for _, ext := range o.ExternalTTYs {
		args = append(args, "--external", ext)
	}
	logPath := filepath.Join(o.LogDir, o.LogFile)
	cpu, runErr := runUsage(p, args, nil)
	srvErr := srv.wait()
	if runErr != nil {
		if srvErr != nil {
			// CRIU failed because the sink stopped reading (a broken
			// pipe): the sink's error (a full or unreachable store, say)
			// is the cause; CRIU's follows.
			return nil, fmt.Errorf("the archive could not be written: %w\n  so CRIU stopped: %w", srvErr, newError("dump", runErr, logPath))
		}
		return nil, newError("dump", runErr, logPath)
	}
	if srvErr != nil {
		// CRIU succeeded but an image did not reach the archive intact:
		// the tree is as CRIU left it (stopped, with LeaveStopped).
		return nil, fmt.Errorf("%w: %w\n  CRIU's log: %s", ErrSinkFailed, srvErr, logPath)
	}
	res := &DumpResult{LogPath: logPath, CPU: cpu}
	if d, err := os.Open(o.LogDir); err == nil {
		res.Stats = dumpStats(d)
		d.Close()
	}
	return res, nil
}

// ErrSinkFailed means CRIU dumped the tree but an image did not reach its
// destination (see DumpStreamed): CRIU did not resume the tree.
var ErrSinkFailed = errors.New("CRIU finished the dump, but an image did not reach the archive")

// ImageSource provides the images of a streamed restore.
type ImageSource interface {
	// Has reports whether the image exists (CRIU asks for many optional
	// images).
	Has(name string) bool
	// WriteImage writes the whole image to pipe (a pipe to CRIU). It is
	// called at most once per image, from its own goroutine, concurrently
	// with other images. An error (or a short write) makes CRIU fail the
	// restore before any restored task runs: CRIU reads every page before
	// it resumes the tree.
	WriteImage(name string, pipe *os.File) error
}

// RestoreStreamed restores like Restore (o.Detach is implied), reading the
// images from src instead of o.ImagesDir (which must exist: it holds the
// streamer's socket). If src fails to serve an image, the error wraps
// src's; should CRIU have restored the tree anyway, the result is returned
// too, with the PID, so that the caller can end it.
func (c *Client) RestoreStreamed(o RestoreOptions, src ImageSource) (*RestoreResult, error) {
	p, err := c.Path()
	if err != nil {
		return nil, err
	}
	srv, err := listenImages(o.ImagesDir, true)
	if err != nil {
		return nil, err
	}
	srv.exists = src.Has
	srv.handle = src.WriteImage
	srv.serve()

	pidFile := filepath.Join(o.ImagesDir, "restored.pid")
	args := []string{"restore", "--stream", "--restore-detached", "--restore-sibling", "--pidfile", pidFile}
	args = append(args, commonArgs(srv.dirPath, o.LogDir, o.LogFile, o.shared())...)
	if o.LeaveStopped {
		args = append(args, "--leave-stopped")
	}
	var extra []*os.File
	for key, f := range o.TTYs {
		args = append(args, "--inherit-fd", fmt.Sprintf("fd[%d]:%s", 3+len(extra), key))
		extra = append(extra, f)
	}
	logPath := filepath.Join(o.LogDir, o.LogFile)
	runErr := run(p, args, extra)
	srvErr := srv.wait()
	if srvErr != nil {
		// The images could not all be served (a damaged archive): that is
		// why CRIU failed, if it did. If it did not, the restored tree
		// must not be trusted: its PID comes back with the error so that
		// the caller can end it.
		err := fmt.Errorf("restore stopped: %w", srvErr)
		if runErr == nil {
			if pid, perr := readPID(pidFile); perr == nil {
				return &RestoreResult{PID: pid, LogPath: logPath}, err
			}
		}
		return nil, err
	}
	if runErr != nil {
		return nil, newError("restore", runErr, logPath)
	}
	pid, err := readPID(pidFile)
	if err != nil {
		return nil, &Error{Op: "restore", Err: err, LogPath: logPath}
	}
	return &RestoreResult{PID: pid, LogPath: logPath}, nil
}

// readPID reads the PID CRIU wrote into a pidfile.
func readPID(pidFile string) (int, error) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, fmt.Errorf("read the restored PID: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad restored PID %q in %s", b, pidFile)
	}
	return pid, nil
}

// commonArgs are the command-line twin of baseOpts.
func commonArgs(imagesDir, logDir, logFile string, s shared) []string {
	args := []string{"-D", imagesDir, "-W", logDir, "-o", logFile, "-v4", "--manage-cgroups=soft",
		"--network-lock", networkLockName(s.networkLock)}
	for _, f := range []struct {
		on   bool
		flag string
	}{
		{s.tcpEstablished, "--tcp-established"},
		{s.shellJob, "--shell-job"},
		{s.extUnixSockets, "--ext-unix-sk"},
		{s.fileLocks, "--file-locks"},
		{s.linkRemap, "--link-remap"},
	} {
		if f.on {
			args = append(args, f.flag)
		}
	}
	return args
}

// networkLockName is networkLock for the command line.
func networkLockName(l NetworkLock) string {
	switch l {
	case NetworkLockIPTables, NetworkLockSkip:
		return string(l)
	}
	return string(NetworkLockNFTables)
}

// run runs criu with args and extra descriptors (fd 3 on), returning an
// error that includes what CRIU printed on its own output (it prints there
// before its log is open, e.g. when it cannot reach the streamer).
func run(path string, args []string, extra []*os.File) error {
	_, err := runUsage(path, args, extra)
	return err
}

// runUsage is run, also returning the CPU time the command used.
func runUsage(path string, args []string, extra []*os.File) (time.Duration, error) {
	cmd := exec.Command(path, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.ExtraFiles = extra
	err := cmd.Run()
	cpu := cpuOf(cmd.ProcessState)
	if err != nil {
		if msg := strings.TrimSpace(out.String()); msg != "" {
			return cpu, fmt.Errorf("%w: %s", err, lastLines(msg, 5))
		}
		return cpu, err
	}
	return cpu, nil
}
