package storage

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/nats-io/nats.go"
)

// The servers scripts/setup-servers.sh builds; keep the versions in step with it.
const (
	versityVersion = "v1.8.0"
	natsVersion    = "v2.15.3"

	testAccess   = "cedanatestaccess"
	testSecret   = "cedana-test-secret-DO-NOT-LOG"
	testNATSUser = "cedana"
	testNATSPass = "nats-test-password-DO-NOT-LOG"
)

// serverBinary finds a server built by scripts/setup-servers.sh. Outside CI a missing
// binary skips the test with the reason; under CI=true it fails.
func serverBinary(t testing.TB, name, version string) string {
	t.Helper()
	dir := os.Getenv("CEDANA_SERVER_CACHE")
	if dir == "" {
		dir = "/var/cache/cedana/bin"
	}
	p := filepath.Join(dir, name+"-"+version)
	if st, err := os.Stat(p); err != nil || st.Mode()&0o111 == 0 {
		msg := fmt.Sprintf("%s %s not found at %s: run `make setup` (scripts/setup-servers.sh builds it)", name, version, p)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// testServer is a server process started by a test and stopped by its PID.
type testServer struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has been waited for
	log    string
	addr   string // host:port
	dir    string // its data directory
}

func (s *testServer) logTail() string {
	b, _ := os.ReadFile(s.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// stop kills the server by its PID and waits for it.
func (s *testServer) stop() {
	_ = s.cmd.Process.Kill()
	<-s.exited
}

// startServer runs bin with args (a minimal environment: nothing from ours leaks in, such
// as VGW_* or AWS_* variables) and waits until ready returns nil.
func startServer(t testing.TB, bin string, args []string, dir, addr string, ready func() error) *testServer {
	t.Helper()
	logPath := filepath.Join(dir, "server.log")
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir}
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s := &testServer{cmd: cmd, exited: exited, log: logPath, addr: addr, dir: dir}
	t.Cleanup(s.stop)
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("%s exited before it was ready; its log:\n%s", filepath.Base(bin), s.logTail())
		default:
		}
		err := ready()
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 30 s (%v); its log:\n%s", filepath.Base(bin), err, s.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startVersity starts versitygw serving S3 from a temporary directory on a free loopback
// port (its default, ":7070", would listen on every interface), with one bucket.
func startVersity(t testing.TB, bucket string) *testServer {
	t.Helper()
	bin := serverBinary(t, "versitygw", versityVersion)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	// No --admin-port, --webui or --pprof: those stay off.
	args := []string{"--access", testAccess, "--secret", testSecret, "--port", addr, "--region", "us-east-1",
		"--quiet", "posix", data}
	client := func() (*minio.Client, error) {
		return minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(testAccess, testSecret, ""),
			Region: "us-east-1", BucketLookup: minio.BucketLookupPath})
	}
	s := startServer(t, bin, args, dir, addr, func() error {
		c, err := client()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = c.ListBuckets(ctx)
		return err
	})
	if bucket != "" {
		c, _ := client()
		if err := c.MakeBucket(context.Background(), bucket, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
			t.Fatalf("create bucket %s: %v", bucket, err)
		}
	}
	return s
}

// s3Config is a config for the test server.
func (s *testServer) s3Config(bucket, prefix string) S3Config {
	return S3Config{Endpoint: "http://" + s.addr, Bucket: bucket, Region: "us-east-1", Prefix: prefix,
		PathStyle: true, PartSize: minPartSize, AccessKey: testAccess, SecretKey: testSecret}
}

// startNATS starts nats-server with JetStream on a free loopback port, storing in a
// temporary directory, with a user and password. Its monitoring port stays off (its
// default) and it forms no cluster.
func startNATS(t testing.TB) *testServer {
	t.Helper()
	bin := serverBinary(t, "nats-server", natsVersion)
	dir := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf := fmt.Sprintf(`
listen: %q
server_name: cedana_test
max_payload: 1MB
jetstream {
  store_dir: %q
  max_memory_store: 64MB
  max_file_store: 16GB
}
authorization {
  user: %q
  password: %q
}
`, addr, filepath.Join(dir, "js"), testNATSUser, testNATSPass)
	cf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	// Check the configuration first, so a mistake reads as one.
	if out, err := exec.Command(bin, "-t", "-c", cf).CombinedOutput(); err != nil {
		t.Fatalf("nats-server rejects the test configuration: %v\n%s", err, out)
	}
	s := startServer(t, bin, []string{"-c", cf}, dir, addr, func() error {
		nc, err := nats.Connect("nats://"+addr, nats.UserInfo(testNATSUser, testNATSPass), nats.Timeout(time.Second))
		if err != nil {
			return err
		}
		defer nc.Close()
		_, err = nc.Request("$JS.API.INFO", nil, time.Second)
		return err
	})
	return s
}

// natsURL is the server's URL with the test user's password.
func (s *testServer) natsURL() string {
	return fmt.Sprintf("nats://%s:%s@%s", testNATSUser, testNATSPass, s.addr)
}

// noSecrets fails when an error message shows a test secret.
func noSecrets(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range []string{testSecret, testNATSPass, "AGE-SECRET-KEY"} {
		if strings.Contains(err.Error(), s) {
			t.Fatalf("error message shows a secret: %v", err)
		}
	}
}
