package criu

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cedana/cedana/internal/proc"
)

// Template clones are restored with the `criu` command from a directory
// of images that many restores share (read only: CRIU writes its log,
// pidfile and the lazy-pages socket into the work directory, o.LogDir).
// That path also offers what the RPC restore does not: joining an
// existing network namespace, replacing regular files by inherited
// descriptors, and lazy (post-copy) restore.
//
// Lazy restore: `criu lazy-pages` listens on a unix socket in the work
// directory; `criu restore --lazy-pages` registers every private
// anonymous mapping of the tree with userfaultfd and hands the
// descriptors to that server instead of filling the mappings. The tree
// runs at once; a page it touches first is copied in on the fault, and the
// server copies the rest in the background, then exits. Restore time so
// no longer grows with the tree's memory.

// lazySocket is the name of the lazy-pages server's socket in the work
// directory (CRIU's LAZY_PAGES_SOCK_NAME).
const lazySocket = "lazy-pages.socket"

// LazyServer is a running `criu lazy-pages` process serving one restore.
type LazyServer struct {
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	logPath string
	// hold keeps the tree's userfaultfds open past the server's death
	// (lazyhold.go); set once the restore returned, before done closes.
	holdMu sync.Mutex
	hold   *uffdHold
}

// Done is closed when the server has exited: every page was copied in,
// or the restored tree went away.
func (l *LazyServer) Done() <-chan struct{} { return l.done }

// Err is the server's exit error, once Done is closed.
func (l *LazyServer) Err() error {
	<-l.done
	return l.err
}

// Stop ends the server at once (pages not copied yet are lost: only for a
// tree that is being killed).
func (l *LazyServer) Stop() {
	if l.cmd.Process != nil {
		_ = l.cmd.Process.Kill()
	}
	<-l.done
	l.holding().release()
}

// holding is the server's hold of the tree's userfaultfds, or nil.
func (l *LazyServer) holding() *uffdHold {
	l.holdMu.Lock()
	defer l.holdMu.Unlock()
	return l.hold
}

// Held is how many of the tree's userfaultfds Cedana holds (for logs and
// tests).
func (l *LazyServer) Held() int { return l.holding().held() }

// holdFaults takes the hold once the restore of the tree rooted at root
// returned (lazyhold.go).
func (l *LazyServer) holdFaults(root int) {
	if l.cmd.Process == nil {
		return
	}
	want := 1
	if tree, err := proc.Tree(root); err == nil {
		want = len(tree)
	}
	h := holdFaults(l.cmd.Process.Pid, want, time.Second)
	l.holdMu.Lock()
	l.hold = h
	l.holdMu.Unlock()
	select {
	case <-l.done:
		// It ended while the hold was taken: as in the server's own
		// goroutine, a clean end lets go at once.
		if l.err == nil {
			h.release()
		}
	default:
	}
}

// startLazyServer starts `criu lazy-pages` for the images in o.ImagesDir
// and waits until its socket exists in o.LogDir.
func startLazyServer(criuPath string, o RestoreOptions) (*LazyServer, error) {
	sock := filepath.Join(o.LogDir, lazySocket)
	_ = os.Remove(sock)
	logFile := "lazy-pages.log"
	args := []string{"lazy-pages", "-D", o.ImagesDir, "-W", o.LogDir, "-o", logFile, "-v2"}
	if o.LazyPageServer != "" {
		host, port, err := net.SplitHostPort(o.LazyPageServer)
		if err != nil {
			return nil, fmt.Errorf("lazy page server %q: %w", o.LazyPageServer, err)
		}
		args = append(args, "--page-server", "--address", host, "--port", port)
	}
	cmd := exec.Command(criuPath, args...)
	l := &LazyServer{cmd: cmd, done: make(chan struct{}), logPath: filepath.Join(o.LogDir, logFile)}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start criu lazy-pages: %w", err)
	}
	go func() {
		err := cmd.Wait()
		l.err = err
		close(l.done)
		if err == nil {
			l.holding().release() // every page is in
		} else if h := l.holding(); h != nil {
			time.AfterFunc(uffdHoldMax, h.release) // Stop releases sooner
		}
	}()
	for deadline := time.Now().Add(5 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			return l, nil
		}
		select {
		case <-l.done:
			return nil, newError("lazy-pages", fmt.Errorf("criu lazy-pages exited before it listened: %v", l.err), l.logPath)
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			l.Stop()
			return nil, newError("lazy-pages", errors.New("criu lazy-pages did not listen within 5s"), l.logPath)
		}
	}
}

// RestoreDetached restores the tree saved in o.ImagesDir as a detached
// tree (o.Detach is implied), with o.JoinNetNS, o.InheritFiles and o.Lazy.
// With o.Lazy the returned server keeps feeding the tree its pages; the
// caller may wait for it (LazyServer.Done) and must Stop it if it kills
// the tree early. Without o.Lazy the server is nil.
func (c *Client) RestoreDetached(o RestoreOptions) (*RestoreResult, *LazyServer, error) {
	p, err := c.Path()
	if err != nil {
		return nil, nil, err
	}
	pidFile := filepath.Join(o.LogDir, "restored.pid")
	_ = os.Remove(pidFile)
	args := []string{"restore", "--restore-detached", "--restore-sibling", "--pidfile", pidFile}
	args = append(args, commonArgs(o.ImagesDir, o.LogDir, o.LogFile, o.shared())...)
	if o.LeaveStopped {
		args = append(args, "--leave-stopped")
	}
	if o.JoinNetNS != "" {
		args = append(args, "--join-ns", "net:"+o.JoinNetNS)
	}
	var extra []*os.File
	keys := make([]string, 0, len(o.InheritFiles))
	for k := range o.InheritFiles {
		keys = append(keys, k)
	}
	sort.Strings(keys) // stable descriptor numbers, for reading logs
	for _, path := range keys {
		if !filepath.IsAbs(path) {
			return nil, nil, fmt.Errorf("inherited file %q: the path must be absolute", path)
		}
		// CRIU names regular files by their path without the leading slash.
		args = append(args, "--inherit-fd", fmt.Sprintf("fd[%d]:%s", 3+len(extra), strings.TrimPrefix(path, "/")))
		extra = append(extra, o.InheritFiles[path])
	}
	for key, f := range o.TTYs {
		args = append(args, "--inherit-fd", fmt.Sprintf("fd[%d]:%s", 3+len(extra), key))
		extra = append(extra, f)
	}
	var lazy *LazyServer
	if o.Lazy {
		if lazy, err = startLazyServer(p, o); err != nil {
			return nil, nil, err
		}
		args = append(args, "--lazy-pages")
	}
	logPath := filepath.Join(o.LogDir, o.LogFile)
	if err := run(p, args, extra); err != nil {
		if lazy != nil {
			lazy.Stop()
		}
		return nil, nil, newError("restore", err, logPath)
	}
	pid, err := readPID(pidFile)
	if err != nil {
		if lazy != nil {
			lazy.Stop()
		}
		return nil, nil, &Error{Op: "restore", Err: err, LogPath: logPath}
	}
	if lazy != nil {
		lazy.holdFaults(pid)
	}
	return &RestoreResult{PID: pid, LogPath: logPath}, lazy, nil
}
