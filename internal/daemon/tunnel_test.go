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
