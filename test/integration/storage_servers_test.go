package integration

// Real storage servers for the storage tests: versitygw (S3) and
// nats-server (JetStream), built by scripts/setup-servers.sh into
// /var/cache/cedana/bin/<name>-<version> (CEDANA_SERVER_CACHE), started
// here on free loopback ports in temporary directories, with a minimal
// environment, and killed by PID.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/testenv"
)

// Keep in step with scripts/setup-servers.sh.
const (
	versityVersion = "v1.8.0"
	natsVersion    = "v2.15.3"

	s3Access = "cedanaitaccess"
	s3Secret = "cedana-it-secret-DO-NOT-LOG"
	natsUser = "cedana"
	natsPass = "nats-it-password-DO-NOT-LOG"
)

// storageServer is a server process a test started.
type storageServer struct {
	t      *testing.T
	bin    string
	args   []string
	dir    string // its working and data directory
	data   string // versitygw: the directory it serves buckets from
	addr   string // 127.0.0.1:port
	cmd    *exec.Cmd
	exited chan struct{}
}

// serverBin finds a server binary built by scripts/setup-servers.sh; a
// missing one skips outside CI and fails in CI.
func serverBin(t *testing.T, name, version string) string {
	t.Helper()
	dir := os.Getenv("CEDANA_SERVER_CACHE")
	if dir == "" {
		dir = "/var/cache/cedana/bin"
	}
	p := filepath.Join(dir, name+"-"+version)
	if st, err := os.Stat(p); err != nil || st.Mode()&0o111 == 0 {
		testenv.Missing(t, fmt.Sprintf("%s %s not found at %s: run `make setup` (scripts/setup-servers.sh builds it)", name, version, p))
	}
	return p
}

// startS3 starts versitygw with one bucket (a directory it serves).
func startS3(t *testing.T, bucket string) *storageServer {
	t.Helper()
	s := &storageServer{t: t, bin: serverBin(t, "versitygw", versityVersion), dir: t.TempDir(),
		addr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	s.data = filepath.Join(s.dir, "data")
	if err := os.MkdirAll(filepath.Join(s.data, bucket), 0o755); err != nil {
		t.Fatal(err)
	}
	// No --admin-port, --webui or --pprof: those stay off.
	s.args = []string{"--access", s3Access, "--secret", s3Secret, "--port", s.addr, "--region", "us-east-1",
		"--quiet", "posix", s.data}
	s.start()
	t.Cleanup(s.stop)
	return s
}

// s3Env is the environment the CLI needs to reach the server: the AWS
// credentials (the only way they are taken) and the endpoint.
func (s *storageServer) s3Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s3Access, "AWS_SECRET_ACCESS_KEY=" + s3Secret,
		"CEDANA_STORAGE_S3_ENDPOINT=http://" + s.addr, "CEDANA_STORAGE_S3_PATH_STYLE=true",
		"CEDANA_STORAGE_S3_REGION=us-east-1"}
}

// startJetStream starts nats-server with JetStream, a user and a password.
func startJetStream(t *testing.T) *storageServer {
	t.Helper()
	s := &storageServer{t: t, bin: serverBin(t, "nats-server", natsVersion), dir: t.TempDir(),
		addr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	conf := fmt.Sprintf("listen: %q\nserver_name: cedana_it\njetstream { store_dir: %q }\nauthorization { user: %q, password: %q }\n",
		s.addr, filepath.Join(s.dir, "js"), natsUser, natsPass)
	cf := filepath.Join(s.dir, "nats.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.args = []string{"-c", cf}
	s.start()
	t.Cleanup(s.stop)
	return s
}

// natsURL is the server's URL with the user and password.
func (s *storageServer) natsURL() string {
	return fmt.Sprintf("nats://%s:%s@%s", natsUser, natsPass, s.addr)
}

// start runs the server and waits until its port accepts connections.
func (s *storageServer) start() {
	s.t.Helper()
	lf, err := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	defer lf.Close()
	cmd := exec.Command(s.bin, s.args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + s.dir}
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start %s: %v", s.bin, err)
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	exited := s.exited
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", s.addr, time.Second); err == nil {
			c.Close()
			time.Sleep(200 * time.Millisecond) // JetStream needs a moment after listening
			return
		}
		select {
		case <-exited:
			s.t.Fatalf("%s exited at start: %s", filepath.Base(s.bin), s.logTail())
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s not listening after 30 s: %s", filepath.Base(s.bin), s.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop kills the server by its PID (SIGKILL: as a crash) and waits.
func (s *storageServer) stop() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

func (s *storageServer) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// objects lists the archives (*.zip) versitygw holds in bucket, by key.
func (s *storageServer) objects(bucket string) []string {
	s.t.Helper()
	var out []string
	root := filepath.Join(s.data, bucket)
	_ = filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && strings.HasSuffix(p, ".zip") && !strings.Contains(p, "/.sgwtmp/") {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// dataBytes is the size of everything under the server's directory.
func (s *storageServer) dataBytes() int64 {
	var n int64
	_ = filepath.Walk(s.dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// noSecret fails when a command's output shows a test secret.
func noSecret(t *testing.T, r result) {
	t.Helper()
	for _, s := range []string{s3Secret, natsPass, "AGE-SECRET-KEY"} {
		if strings.Contains(r.stdout+r.stderr, s) {
			t.Fatalf("output shows a secret:\n%s", r)
		}
	}
}
