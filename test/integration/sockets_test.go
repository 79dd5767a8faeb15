package integration

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// redisCmd sends one command in RESP and returns the reply line(s).
func redisCmd(t *testing.T, c net.Conn, rd *bufio.Reader, args ...string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(b.String())); err != nil {
		t.Fatalf("redis %v: %v", args, err)
	}
	line, err := rd.ReadString('\n')
	if err != nil {
		t.Fatalf("redis %v: %v", args, err)
	}
	line = strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(line, "$") && line != "$-1" {
		val, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("redis %v: %v", args, err)
		}
		return strings.TrimRight(val, "\r\n")
	}
	return line
}

func dialRedis(t *testing.T, port int) (net.Conn, *bufio.Reader) {
	t.Helper()
	var c net.Conn
	eventually(t, 10*time.Second, "redis to accept connections", func() bool {
		var err error
		c, err = net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		return err == nil
	})
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// TestRedisWithEstablishedConnection: a real server holding data, with a
// client connection open during the dump. Cedana must choose
// --tcp-established by itself; after restore the keys answer on a new
// connection and on the connection that was open during the dump.
func TestRedisWithEstablishedConnection(t *testing.T) {
	testRedis(t, 100, 16)
}

// TestRedisLargeStreamed: the same with 96 MiB of data, which is above the
// streaming threshold: TCP repair, the nftables lock and the pipes of
// criu --stream together, both ways.
func TestRedisLargeStreamed(t *testing.T) {
	testRedis(t, 96, 1<<20)
}

// testRedis fills a redis with keys values of about size bytes, dumps it
// with a client connected, restores it and checks every key it sampled.
func testRedis(t *testing.T, keys, size int) {
	requireCRIU(t)
	redis := requireBinary(t, "redis-server")
	e := newEnv(t)
	port := freePort(t)
	p := start(t, redis, "--port", itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--daemonize", "no")
	value := func(i int) string {
		v := fmt.Sprintf("value-%d-", i*i)
		return strings.Repeat(v, max(1, size/len(v)))
	}
	c1, rd1 := dialRedis(t, port)
	for i := 0; i < keys; i++ {
		if got := redisCmd(t, c1, rd1, "SET", fmt.Sprintf("key:%d", i), value(i)); got != "+OK" {
			t.Fatalf("SET: %q", got)
		}
	}
	redisCmd(t, c1, rd1, "INCRBY", "counter", "41")

	var out struct {
		Path    string `json:"path"`
		Options struct {
			TCPEstablished bool   `json:"tcp_established"`
			NetworkLock    string `json:"network_lock"`
			Streamable     bool   `json:"streamable"`
		} `json:"options"`
	}
	e.dumpJSON(p.pid(), &out)
	if !out.Options.TCPEstablished {
		t.Errorf("tcp-established was not chosen for a process with an established connection")
	}
	if big := keys*size >= 64<<20; out.Options.Streamable != big {
		t.Errorf("streamable = %v for %d MiB of data", out.Options.Streamable, keys*size>>20)
	}
	p.waitExit(t, 5*time.Second)

	e.restore(out.Path)
	c2, rd2 := dialRedis(t, port)
	for _, i := range []int{0, 7, keys - 1} {
		if got, want := redisCmd(t, c2, rd2, "GET", fmt.Sprintf("key:%d", i)), value(i); got != want {
			t.Errorf("after restore GET key:%d = %.40q… (%d bytes), want %.40q… (%d bytes)", i, got, len(got), want, len(want))
		}
	}
	if got := redisCmd(t, c2, rd2, "INCR", "counter"); got != ":42" {
		t.Errorf("INCR counter after restore = %q, want :42", got)
	}
	// The connection that was open during the dump still works.
	if got := redisCmd(t, c1, rd1, "GET", "key:3"); got != value(3) {
		t.Errorf("old connection after restore: GET key:3 = %.40q…", got)
	}
}

// unixServer holds a counter in memory and serves it over a unix socket;
// it also keeps a socketpair with SO_PASSCRED between two threads.
const unixServer = `
import os, socket, sys, threading
path = sys.argv[1]
a, b = socket.socketpair()
a.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
def echo():
    while True:
        b.sendall(b.recv(64))
threading.Thread(target=echo, daemon=True).start()
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(4)
n = 0
while True:
    c, _ = srv.accept()
    n += 1
    a.sendall(b"ping")
    pong = a.recv(64)
    c.sendall(("%d %s\n" % (n, pong.decode())).encode())
    c.close()
`

func askUnix(t *testing.T, path string) string {
	t.Helper()
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatalf("connect %s: %v", path, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %v", path, err)
	}
	return strings.TrimSpace(line)
}

// TestUnixSocketServer: a listening unix socket and a socketpair survive,
// and so does the in-memory request count.
func TestUnixSocketServer(t *testing.T) {
	requireCRIU(t)
	py := requireBinary(t, "python3")
	e := newEnv(t)
	sock := filepath.Join(t.TempDir(), "srv.sock")
	p := start(t, py, "-c", unixServer, sock)
	eventually(t, 10*time.Second, "the unix socket", func() bool { _, err := os.Stat(sock); return err == nil })
	for i := 1; i <= 3; i++ {
		if got, want := askUnix(t, sock), fmt.Sprintf("%d ping", i); got != want {
			t.Fatalf("before dump: %q, want %q", got, want)
		}
	}
	path := e.dump(p.pid())
	p.waitExit(t, 5*time.Second)
	e.restore(path)
	if got := askUnix(t, sock); got != "4 ping" {
		t.Errorf("after restore: %q, want \"4 ping\" (the count continues)", got)
	}
}
