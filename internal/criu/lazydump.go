package criu

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Lazy (post-copy) migration, the source's half: `criu dump --lazy-pages`
// freezes the tree and writes every image except the private anonymous
// memory, which it keeps in pipes, and then serves that memory from a page
// server on a TCP port until a `criu lazy-pages` daemon on the target has
// pulled all of it (see startLazyServer with a page server). The tree stays
// stopped meanwhile (--leave-stopped) and after: the caller decides whether
// it dies (the target runs the job) or runs again (the migration failed).
//
// CRIU grows each page pipe to 4 MiB for this, which fs.pipe-max-size
// forbids below that without CAP_SYS_RESOURCE: LazyDumpAllowed says so
// before anything is frozen.

// LazyDump is a running `criu dump --lazy-pages`: the images are written,
// and the tree's memory is served on PageServer until the target has it.
type LazyDump struct {
	// PageServer is the loopback address CRIU's page server listens on.
	PageServer string
	// LogPath is CRIU's log.
	LogPath string

	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan struct{}
	err  error
	cpu  time.Duration
	once sync.Once
}

// Address is PageServer.
func (d *LazyDump) Address() string { return d.PageServer }

// Done is closed when CRIU has exited: every page was served, or it
// failed, or Abort killed it.
func (d *LazyDump) Done() <-chan struct{} { return d.done }

// Wait waits for CRIU to exit and returns its error (nil once every page
// was pulled by the target).
func (d *LazyDump) Wait() error {
	<-d.done
	return d.err
}

// CPU is the CPU time CRIU used, once Done is closed.
func (d *LazyDump) CPU() time.Duration {
	<-d.done
	return d.cpu
}

// Abort kills CRIU (the pages not pulled yet are lost to the target) and
// waits for it to be gone. The tree stays frozen until CRIU has let go of
// it; it is then stopped if the caller stopped it (see DumpLazy).
func (d *LazyDump) Abort() {
	d.once.Do(func() {
		if d.cmd.Process != nil {
			_ = d.cmd.Process.Kill()
		}
	})
	<-d.done
}

// LazyDumpAllowed reports why a lazy dump cannot work on this machine, or
// nil.
func LazyDumpAllowed() error {
	if max := pipeMaxSize(); max < lazyPipeBytes && !hasCapSysResource() {
		return fmt.Errorf("lazy migration needs fs.pipe-max-size ≥ %d on the source node (it is %d; CRIU's page server grows its pipes to 4 MiB): run `sysctl -w fs.pipe-max-size=%d` (make setup does) or migrate without --lazy",
			lazyPipeBytes, max, lazyPipeBytes)
	}
	return nil
}

// DumpLazy starts `criu dump --lazy-pages` of the tree rooted at o.PID,
// which must ask for o.LeaveStopped, and returns once the images are in
// o.ImagesDir and the page server listens on a loopback port. If CRIU
// fails before that, the tree was resumed by CRIU and the error explains.
func (c *Client) DumpLazy(o DumpOptions) (*LazyDump, error) {
	if !o.LeaveStopped || o.LeaveRunning {
		return nil, errors.New("a lazy dump keeps the tree stopped (LeaveStopped)")
	}
	if err := LazyDumpAllowed(); err != nil {
		return nil, err
	}
	p, err := c.Path()
	if err != nil {
		return nil, err
	}
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer statusR.Close()
	args := []string{"dump", "-t", strconv.Itoa(o.PID)}
	args = append(args, commonArgs(o.ImagesDir, o.LogDir, o.LogFile, o.shared())...)
	args = append(args, "--leave-stopped", "--lazy-pages", "--address", "127.0.0.1", "--port", strconv.Itoa(port), "--status-fd", "3")
	if o.GhostLimit > 0 {
		args = append(args, "--ghost-limit", strconv.FormatUint(min(o.GhostLimit, 1<<32-1), 10))
	}
	for _, ext := range o.ExternalTTYs {
		args = append(args, "--external", ext)
	}
	d := &LazyDump{
		PageServer: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		LogPath:    filepath.Join(o.LogDir, o.LogFile),
		cmd:        exec.Command(p, args...),
		out:        &bytes.Buffer{},
		done:       make(chan struct{}),
	}
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	d.cmd.ExtraFiles = []*os.File{statusW}
	// Its own process group: a signal to the daemon's group never
	// reaches it while it holds the tree.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		statusW.Close()
		return nil, newError("dump", err, d.LogPath)
	}
	statusW.Close()
	go func() {
		err := d.cmd.Wait()
		d.cpu = cpuOf(d.cmd.ProcessState)
		if err != nil {
			if msg := lastLines(string(bytes.TrimSpace(d.out.Bytes())), 5); msg != "" {
				err = fmt.Errorf("%w: %s", err, msg)
			}
			d.err = newError("dump", err, d.LogPath)
		}
		close(d.done)
	}()
	// CRIU writes one byte on --status-fd when the page server is ready,
	// that is, once every image has been written; it closes the pipe
	// without writing when it fails first.
	var b [1]byte
	if n, _ := statusR.Read(b[:]); n == 1 {
		return d, nil
	}
	<-d.done
	if d.err == nil {
		d.err = newError("dump", errors.New("criu dump --lazy-pages exited before its page server was ready"), d.LogPath)
	}
	return nil, d.err
}

// freeLoopbackPort finds a TCP port free on 127.0.0.1 for CRIU's page
// server (CRIU binds it itself a moment later).
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a port for the page server: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
