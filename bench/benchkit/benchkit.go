// Package benchkit holds what the storage benchmarks (bench/storage,
// bench/jsupload) share: the source file they move, and the real servers
// (from the setup's cache) they move it to.
package benchkit

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
)

// MakeSource writes size bytes at path, half random and half text-like,
// as a checkpoint has, and syncs them.
func MakeSource(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 4<<20)
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog 0123456789\n"), len(buf)/55+1)[:len(buf)]
	for off, i := int64(0), 0; off < size; i++ {
		b := text
		if i%2 == 0 {
			r.Read(buf)
			b = buf
		}
		n := min(int64(len(b)), size-off)
		if _, err := f.Write(b[:n]); err != nil {
			return err
		}
		off += n
	}
	return f.Sync()
}

// FreeAddr returns a loopback address with a port free at the moment.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// ServerBin is the path of a server binary the setup built
// (scripts/setup-servers.sh): CEDANA_SERVER_CACHE, else
// /var/cache/cedana/bin.
func ServerBin(name string) string {
	dir := os.Getenv("CEDANA_SERVER_CACHE")
	if dir == "" {
		dir = "/var/cache/cedana/bin"
	}
	return filepath.Join(dir, name)
}

// StartServer starts bin with args in dir (its log there too), waits up
// to 30 s until ready returns nil, and returns its PID and a function
// that kills it by PID.
func StartServer(dir, bin string, args []string, ready func() error) (int, func(), error) {
	if _, err := os.Stat(bin); err != nil {
		return 0, nil, fmt.Errorf("%s missing: run `make setup` (scripts/setup-servers.sh)", bin)
	}
	lf, err := os.Create(filepath.Join(dir, filepath.Base(bin)+".log"))
	if err != nil {
		return 0, nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir}
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return 0, nil, err
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait(); lf.Close() }
	for t0 := time.Now(); ready() != nil; time.Sleep(100 * time.Millisecond) {
		if time.Since(t0) > 30*time.Second {
			stop()
			return 0, nil, fmt.Errorf("%s not ready after 30 s (log in %s)", bin, lf.Name())
		}
	}
	return cmd.Process.Pid, stop, nil
}

// StartNATS starts the setup's nats-server with JetStream in work and
// returns its address, its PID and a function that kills it by PID.
func StartNATS(work string) (string, int, func(), error) {
	addr, err := FreeAddr()
	if err != nil {
		return "", 0, nil, err
	}
	conf := filepath.Join(work, "nats.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("listen: %q\njetstream { store_dir: %q, max_file_store: 64GB }\n", addr, filepath.Join(work, "js"))), 0o600); err != nil {
		return "", 0, nil, err
	}
	pid, stop, err := StartServer(work, ServerBin("nats-server-v2.15.3"), []string{"-c", conf}, func() error {
		nc, err := nats.Connect("nats://" + addr)
		if err == nil {
			nc.Close()
		}
		return err
	})
	return addr, pid, stop, err
}
