package template

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/archive"
)

func TestParseProbe(t *testing.T) {
	for _, c := range []struct {
		in         string
		kind, path string
		port       int
		bad        bool
	}{
		{in: "tcp:8080", kind: "tcp", port: 8080},
		{in: "http:/healthz?x=1", kind: "http", path: "/healthz?x=1"},
		{in: "http:http://127.0.0.1:9000/ready", kind: "http", port: 9000, path: "/ready"},
		{in: "http:http://localhost/", kind: "http", port: 80, path: "/"},
		{in: "file:/tmp/ready", kind: "file", path: "/tmp/ready"},
		{in: "tcp:0", bad: true}, {in: "tcp:x", bad: true}, {in: "tcp:", bad: true},
		{in: "udp:53", bad: true}, {in: "http:ftp://x/", bad: true}, {in: "nothing", bad: true},
	} {
		p, err := ParseProbe(c.in)
		if c.bad {
			if err == nil || !errors.Is(err, ErrInvalid) {
				t.Errorf("%q: want ErrInvalid, got %v", c.in, err)
			}
			continue
		}
		if err != nil || p.Kind != c.kind || p.Port != c.port || p.Path != c.path {
			t.Errorf("%q: got %+v, %v", c.in, p, err)
		}
	}
	if p, err := ParseProbe(""); p != nil || err != nil {
		t.Errorf("empty probe: %v %v", p, err)
	}
}

func TestStore(t *testing.T) {
	ctx := context.Background()
	s := NewStore(filepath.Join(t.TempDir(), "templates"))
	if _, err := s.Begin(ctx, "../x"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad name accepted: %v", err)
	}
	d, err := s.Begin(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Begin(ctx, "web"); !errors.Is(err, ErrExists) {
		t.Fatalf("second Begin: %v", err)
	}
	if ts, _ := s.List(ctx); len(ts) != 0 {
		t.Fatalf("uncommitted template listed: %v", ts)
	}
	os.WriteFile(d.Path, []byte("zip"), 0o600)
	if err := s.Commit(ctx, d, &Template{Listen: []int{8080}}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "web")
	if err != nil || got.Archive != d.Path || got.Location != d.Path || got.Listen[0] != 8080 || got.ID != d.ID {
		t.Fatalf("Get: %+v %v", got, err)
	}
	if err := s.Remove(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "web"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removed template: %v", err)
	}
}

func TestCheckExecutables(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "prog")
	os.WriteFile(bin, []byte("v1"), 0o755)
	id, err := Identify(bin)
	if err != nil {
		t.Fatal(err)
	}
	tp := &Template{Name: "t", Executables: []FileID{id}, Created: time.Now()}
	if err := CheckExecutables(tp); err != nil {
		t.Fatalf("unchanged binary refused: %v", err)
	}
	// Replaced by a file of the same size (new inode): still refused.
	os.WriteFile(bin+".new", []byte("v2"), 0o755)
	os.Rename(bin+".new", bin)
	if err := CheckExecutables(tp); !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), bin) {
		t.Fatalf("replaced binary: %v", err)
	}
	os.Remove(bin)
	if err := CheckExecutables(tp); !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("removed binary: %v", err)
	}
}

func TestScanManifest(t *testing.T) {
	m := &archive.Manifest{PIDNamespace: true, Processes: []archive.Process{{
		PID: 1, Name: "svc", RSS: 100,
		Files: []archive.OpenFile{
			{FD: 1, Path: "/var/log/svc.log", Type: "file", Flags: syscall.O_WRONLY | syscall.O_APPEND},
			{FD: 2, Path: "/var/log/svc.log", Type: "file", Flags: syscall.O_WRONLY | syscall.O_APPEND},
			{FD: 4, Path: "/etc/svc.conf", Type: "file", Flags: syscall.O_RDONLY},
		},
		Sockets: []archive.SocketInfo{{FD: 3, Family: "tcp", State: "LISTEN", Local: "0.0.0.0:8080"}},
	}}}
	s := ScanManifest(m)
	if s.Err() != nil || len(s.Listen) != 1 || s.Listen[0] != 8080 || len(s.Outputs) != 1 || s.Outputs[0] != "/var/log/svc.log" {
		t.Fatalf("clean manifest: %+v %v", s, s.Err())
	}
	m.Processes[0].Files = append(m.Processes[0].Files, archive.OpenFile{FD: 5, Path: "/data/db", Type: "file", Flags: syscall.O_RDWR})
	m.Processes[0].Sockets = append(m.Processes[0].Sockets, archive.SocketInfo{FD: 6, Family: "tcp", State: "ESTABLISHED", Local: "10.0.0.1:40000", Remote: "10.0.0.2:5432"})
	err := ScanManifest(m).Err()
	if !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "/data/db") || !strings.Contains(err.Error(), "established TCP connection") {
		t.Fatalf("unsafe manifest: %v", err)
	}
}
