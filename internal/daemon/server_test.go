package daemon

import (
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// TestListenUnixMode: the socket is 0600, a live socket is not taken
// over, a stale one is replaced, and no private directory is left behind.
func TestListenUnixMode(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "cdsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s")
	l, err := listenUnix(path, "")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a 0600 socket", st.Mode())
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the renamed socket: %v", err)
	}
	c.Close()
	if _, err := listenUnix(path, ""); err == nil {
		t.Error("a second listener took over a live socket")
	}
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Errorf("closing the listener removed %s (the daemon does that itself): %v", path, err)
	}
	l2, err := listenUnix(path, "") // stale socket
	if err != nil {
		t.Fatalf("replace a stale socket: %v", err)
	}
	l2.Close()
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("left behind: %v", entries)
	}
}

// TestListenUnixKeepsUmask: creating the socket never changes the
// process's umask, which other goroutines (the job manager's) rely on
// while it happens: files they create meanwhile get their usual modes.
func TestListenUnixKeepsUmask(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "cdsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)

	var stop atomic.Bool
	var bad atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		work := filepath.Join(dir, "work")
		for i := 0; !stop.Load(); i++ {
			if err := os.Mkdir(work, 0o755); err == nil {
				if st, err := os.Stat(work); err == nil && st.Mode().Perm() != 0o755 {
					bad.Add(1)
				}
				os.Remove(work)
			}
		}
	}()
	for i := 0; i < 300 && bad.Load() == 0; i++ {
		l, err := listenUnix(filepath.Join(dir, "s"), "")
		if err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatal(err)
		}
		l.Close()
		os.Remove(filepath.Join(dir, "s"))
	}
	stop.Store(true)
	wg.Wait()
	if n := bad.Load(); n > 0 {
		t.Errorf("%d directories made by another goroutine got the wrong mode while the socket was created", n)
	}
}
