package daemon

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// natsPair starts an in-process NATS server and returns two connections
// to it, one per "node".
func natsPair(t testing.TB) (src, dst *nats.Conn) {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(s.Shutdown)
	conn := func() *nats.Conn {
		nc, err := nats.Connect(s.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	return conn(), conn()
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: still open after 5 s", what)
	}
}

// An end that fails tells the other end, which fails too even though it
// has nothing to send: a source page server waiting for its next request
// when the target's lazy-pages daemon died must not wait forever.
func TestTunnelFailureReachesAnIdlePeer(t *testing.T) {
	srcNC, dstNC := natsPair(t)
	srcConn, _ := net.Pipe() // the page server: says nothing
	dstConn, _ := net.Pipe() // the lazy-pages daemon: says nothing
	src, err := serveTunnel(srcNC, "a", func() (io.ReadWriteCloser, error) { return srcConn, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer src.stop()
	dst, err := dialTunnel(dstNC, "b", src.self, dstConn)
	if err != nil {
		t.Fatal(err)
	}
	dst.fail(errors.New("lazy-pages died"))
	waitClosed(t, src.dead, "the source's end after the target's failed")
	if err := src.Err(); err == nil || !strings.Contains(err.Error(), "lazy-pages died") {
		t.Fatalf("the source's end failed with %v; want the target's reason", err)
	}
}

// A pushed archive (push.go) arrives whole in the target's file, and the
// source's Commit returns only once every byte was acknowledged; a target
// that cannot write fails the source's writes with its reason.
func TestPushArchiveThroughTunnel(t *testing.T) {
	srcNC, dstNC := natsPair(t)
	data := make([]byte, 20<<20+12345)
	_, _ = rand.Read(data)

	for _, tc := range []struct {
		name    string
		broken  bool // the target's file refuses writes
		wantErr string
	}{{name: "whole"}, {name: "target cannot write", broken: true, wantErr: "not enough space"}} {
		t.Run(tc.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			src, err := serveTunnel(srcNC, "a", func() (io.ReadWriteCloser, error) { return &pipeConn{pr: pr}, nil })
			if err != nil {
				t.Fatal(err)
			}
			defer src.stop()
			dir := t.TempDir()
			tmp := filepath.Join(dir, "x.part")
			f, err := os.Create(tmp)
			if err != nil {
				t.Fatal(err)
			}
			in := &pushIn{dir: dir, tmp: tmp, f: &enospcFile{File: f, broken: tc.broken}, last: time.Now(), done: make(chan struct{})}
			if in.t, err = dialTunnel(dstNC, "b", src.self, in); err != nil {
				t.Fatal(err)
			}
			d := &pushDest{t: src, pw: pw, abort: func() {}}
			_, werr := io.Copy(d, bytes.NewReader(data))
			cerr := werr
			if cerr == nil {
				cerr = d.Commit()
			}
			if tc.wantErr != "" {
				if cerr == nil || !strings.Contains(cerr.Error(), tc.wantErr) {
					t.Fatalf("push to a target that cannot write: %v; want an error saying %q", cerr, tc.wantErr)
				}
				waitClosed(t, in.done, "the target's file")
				if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("the failed partial archive is still there: %v", err)
				}
				return
			}
			if cerr != nil {
				t.Fatal(cerr)
			}
			waitClosed(t, in.done, "the target's file")
			if in.err != nil {
				t.Fatal(in.err)
			}
			got, _ := os.ReadFile(tmp)
			if in.n != int64(len(data)) || !bytes.Equal(got, data) {
				t.Fatalf("the target has %d bytes (file %d), want the %d sent", in.n, len(got), len(data))
			}
		})
	}
}

// enospcFile makes a refused write look like a full disk.
type enospcFile struct {
	*os.File
	broken bool
}

func (f *enospcFile) Write(p []byte) (int, error) {
	if f.broken {
		return 0, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	}
	return f.File.Write(p)
}

// BenchmarkPushThroughTunnel measures the push path alone (no CRIU, no
// archive): bytes written into a pushDest until the target's file has
// them all, through an in-process NATS server.
func BenchmarkPushThroughTunnel(b *testing.B) {
	srcNC, dstNC := natsPair(b)
	data := make([]byte, 4<<20)
	_, _ = rand.Read(data)
	const total = 256 << 20
	b.SetBytes(total)
	for b.Loop() {
		pr, pw := io.Pipe()
		src, err := serveTunnel(srcNC, "a", func() (io.ReadWriteCloser, error) { return &pipeConn{pr: pr}, nil })
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.CreateTemp(b.TempDir(), "push")
		if err != nil {
			b.Fatal(err)
		}
		in := &pushIn{dir: filepath.Dir(f.Name()), tmp: f.Name(), f: f, last: time.Now(), done: make(chan struct{})}
		if in.t, err = dialTunnel(dstNC, "b", src.self, in); err != nil {
			b.Fatal(err)
		}
		d := &pushDest{t: src, pw: pw, abort: func() {}}
		for n := 0; n < total; n += len(data) {
			if _, err := d.Write(data); err != nil {
				b.Fatal(err)
			}
		}
		if err := d.Commit(); err != nil {
			b.Fatal(err)
		}
		<-in.done
		src.stop()
		in.t.stop()
	}
}

// The target's side of a push when the source dies mid-archive (its end
// stops without a word, as a killed daemon's would): the target fails
// the arriving archive once nothing came for pushSilence and removes the
// partial file; and a complete archive that no migrate-in claims within
// pushUnclaimed is removed too.
func TestPushTargetCleansUp(t *testing.T) {
	oldS, oldU := pushSilence, pushUnclaimed
	pushSilence, pushUnclaimed = 300*time.Millisecond, 300*time.Millisecond
	defer func() { pushSilence, pushUnclaimed = oldS, oldU }()
	srcNC, dstNC := natsPair(t)
	c := &clusterNode{}

	start := func(id string) (*pushIn, *tunnel, *io.PipeWriter) {
		pr, pw := io.Pipe()
		src, err := serveTunnel(srcNC, "a", func() (io.ReadWriteCloser, error) { return &pipeConn{pr: pr}, nil })
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		tmp := filepath.Join(dir, id+".part")
		f, err := os.Create(tmp)
		if err != nil {
			t.Fatal(err)
		}
		in := &pushIn{from: "a", epoch: 1, dir: dir, tmp: tmp, f: f, last: time.Now(), done: make(chan struct{})}
		c.mu.Lock()
		if c.pushes == nil {
			c.pushes = map[string]*pushIn{}
		}
		c.pushes[id] = in
		c.mu.Unlock()
		if in.t, err = dialTunnel(dstNC, "b", src.self, in); err != nil {
			t.Fatal(err)
		}
		go c.watchPush(id, in)
		return in, src, pw
	}
	gone := func(in *pushIn, what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := os.Stat(in.tmp)
			c.mu.Lock()
			_, listed := c.pushes[filepath.Base(in.tmp[:len(in.tmp)-len(".part")])]
			c.mu.Unlock()
			if errors.Is(err, os.ErrNotExist) && !listed {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the archive is still there (%v) or still listed (%v) after 5 s", what, err, listed)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// The source dies after 3 MiB: its subscription and connection go,
	// no abort is sent.
	in, src, pw := start("dies")
	d := &pushDest{t: src, pw: pw, abort: func() {}}
	if _, err := d.Write(make([]byte, 3<<20)); err != nil {
		t.Fatal(err)
	}
	// The target's end of stream (it sends nothing else) must have
	// reached the source first: sent after the source vanished, it
	// finds nobody listening and fails the tunnel at once, rightly, but
	// without the silence this test is about (seen under load).
	for deadline := time.Now().Add(5 * time.Second); !in.t.sentAll(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the target's end of stream was never acknowledged")
		}
	}
	vanish(src)
	gone(in, "a source that went silent")
	if in.err == nil || !strings.Contains(in.err.Error(), "nothing arrived") {
		t.Fatalf("the silent push ended with %v; want the silence named", in.err)
	}

	// A whole archive that no migrate-in claims.
	in, src, pw = start("unclaimed")
	d = &pushDest{t: src, pw: pw, abort: func() {}}
	if _, err := d.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(); err != nil {
		t.Fatal(err)
	}
	gone(in, "a complete archive nobody claimed")
}

// An idle tunnel whose peer lives stays open (pings are acknowledged);
// one whose peer dies without a word fails within the tunnel's timeout,
// even though no data flows: a source page server waiting for requests
// from a dead target must not wait forever.
func TestTunnelNoticesADeadPeer(t *testing.T) {
	oldT, oldP := tunnelTimeout, tunnelPing
	tunnelTimeout, tunnelPing = 600*time.Millisecond, 100*time.Millisecond
	defer func() { tunnelTimeout, tunnelPing = oldT, oldP }()
	srcNC, dstNC := natsPair(t)
	srcConn, _ := net.Pipe()
	dstConn, _ := net.Pipe()
	src, err := serveTunnel(srcNC, "a", func() (io.ReadWriteCloser, error) { return srcConn, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer src.stop()
	dst, err := dialTunnel(dstNC, "b", src.self, dstConn)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-src.dead:
		t.Fatalf("an idle tunnel between live ends failed: %v", src.Err())
	case <-dst.dead:
		t.Fatalf("an idle tunnel between live ends failed: %v", dst.Err())
	case <-time.After(4 * tunnelTimeout):
	}

	// The target dies: its subscriptions go, nothing is sent.
	vanish(dst)
	waitClosed(t, src.dead, "the source's end after its peer died")
	if err := src.Err(); err == nil || !strings.Contains(err.Error(), "acknowledged nothing") && !strings.Contains(err.Error(), "is gone") {
		t.Fatalf("the source's end failed with %v; want the silence named", err)
	}
}

// vanish makes t's end disappear as a killed daemon's would: its
// subscriptions go and nothing is sent (no abort, no end of stream).
func vanish(t *tunnel) {
	t.mu.Lock()
	t.closed = true // stop, fail: no-ops from now on
	t.mu.Unlock()
	_ = t.sub.Unsubscribe()
	_ = t.acks.Unsubscribe()
}
