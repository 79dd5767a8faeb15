package integration

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBadCommandLine: wrong arguments get a clear error and a non-zero
// exit code without needing CRIU.
func TestBadCommandLine(t *testing.T) {
	e := newEnv(t)
	missing := filepath.Join(t.TempDir(), "nope.zip")
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"non-numeric pid", []string{"client", "dump", "-p", "abc"}, 2, "want a process ID"},
		{"negative pid", []string{"client", "dump", "-p", "-5"}, 2, "want a process ID"},
		{"no pid", []string{"client", "dump"}, 2, "pid"},
		{"restore without file", []string{"client", "restore"}, 2, "accepts 1 arg"},
		{"unknown flag", []string{"client", "dump", "-p", "1", "--frobnicate"}, 2, "unknown flag"},
		{"bad ghost limit", []string{"client", "dump", "-p", "1", "--ghost-limit", "lots"}, 2, "--ghost-limit"},
		{"bad network lock", []string{"client", "dump", "-p", "1", "--network-lock", "magic"}, 2, "--network-lock"},
		{"missing archive", []string{"client", "restore", missing}, 3, "no such file"},
		{"inspect missing", []string{"inspect", missing}, 3, "no such file"},
		{"bad output", []string{"check", "-o", "yaml"}, 2, "output format"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.cedana(c.args...)
			if r.code != c.code {
				t.Errorf("exit %d, want %d\n%s", r.code, c.code, r)
			}
			if !strings.Contains(strings.ToLower(r.stderr), strings.ToLower(c.want)) {
				t.Errorf("stderr does not mention %q:\n%s", c.want, r.stderr)
			}
			if strings.Contains(r.stderr, "goroutine ") || strings.Contains(r.stderr, "panic") {
				t.Errorf("stack trace shown to the user:\n%s", r.stderr)
			}
		})
	}
}

func TestUnknownPID(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	r := e.cedana("client", "dump", "-p", "4194303", "-d", e.dir) // above pid_max's default range
	if r.code != 3 || !strings.Contains(r.stderr, "no process with PID 4194303") {
		t.Fatalf("want exit 3 and 'no process with PID', got %s", r)
	}
}

func TestBadConfig(t *testing.T) {
	e := newEnv(t)
	dir := filepath.Join(e.home, ".cedana")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ body, want string }{
		{"{\n  \"shared_storage\": {\n    \"dump_storage_dir\": \"/x\",\n  }\n}", "line 4"},
		{`{"shared_storage": {"dump_dir": "/x"}}`, `unknown key "shared_storage.dump_dir"`},
		{`{"criu": {"ghost_limit": "big"}}`, "ghost_limit"},
	} {
		if err := os.WriteFile(filepath.Join(dir, "cedana_config.json"), []byte(c.body), 0o600); err != nil {
			t.Fatal(err)
		}
		r := e.cedana("config", "show")
		if r.code == 0 || !strings.Contains(r.stderr, c.want) || !strings.Contains(r.stderr, "cedana_config.json") {
			t.Errorf("config %q: want an error naming the file and %q, got %s", c.body, c.want, r)
		}
	}
}

// TestHostileArchives: every malformed or hostile archive is refused with
// exit code 4 before anything is restored, and nothing is written outside
// the staging area.
func TestHostileArchives(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	p := start(t, "sleep", "1000")
	good := e.dump(p.pid())
	p.waitExit(t, 5*time.Second)
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	staging := filepath.Join(work, "staging")
	if err := os.Mkdir(staging, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		path := filepath.Join(work, name)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	cases := map[string]string{
		"garbage":   write("garbage.zip", []byte("this is not a zip file at all\n")),
		"empty":     write("empty.zip", nil),
		"truncated": write("truncated.zip", data[:len(data)/2]),
		"flipped":   write("flipped.zip", flipInImages(t, data)),
		"escape":    write("escape.zip", craft(t, "../../escaped", false)),
		"absolute":  write("absolute.zip", craft(t, "/tmp/cedana-absolute-escape", false)),
		"nested":    write("nested.zip", craft(t, "images/../../nested-escape", false)),
		"symlink":   write("symlink.zip", craft(t, "images/link.img", true)),
	}
	for name, path := range cases {
		t.Run(name, func(t *testing.T) {
			r := e.cedana("client", "restore", path, "--staging-dir", staging)
			if r.code != 4 {
				t.Errorf("want exit 4 (archive refused), got %s", r)
			}
			if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") {
				t.Errorf("stack trace:\n%s", r.stderr)
			}
			if alive(p.pid()) {
				t.Errorf("the process was restored from a bad archive")
			}
			r = e.cedana("inspect", "--verify", path)
			if r.code != 4 {
				t.Errorf("inspect --verify: want exit 4, got %s", r)
			}
		})
	}
	// Nothing escaped: the work dir holds only the inputs and an empty staging dir.
	for _, f := range []string{filepath.Join(work, "..", "escaped"), "/tmp/cedana-absolute-escape", filepath.Join(work, "nested-escape")} {
		if _, err := os.Lstat(f); err == nil {
			t.Errorf("a hostile archive wrote %s", f)
		}
	}
	if left, _ := os.ReadDir(staging); len(left) != 0 {
		t.Errorf("staging dir not cleaned up: %v", left)
	}
	// The good archive still restores: the refusals harmed nothing.
	e.restore(good)
}

// flipInImages returns a copy of an archive with one byte flipped inside
// the compressed data of its largest images entry.
func flipInImages(t *testing.T, data []byte) []byte {
	t.Helper()
	off, size := largestEntry(t, data, "images/")
	out := append([]byte(nil), data...)
	out[off+size/2] ^= 0x40
	return out
}

// largestEntry returns the data offset and stored size of an archive's
// largest entry whose name starts with prefix.
func largestEntry(t *testing.T, data []byte, prefix string) (int64, int64) {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	var big *zip.File
	for _, f := range zr.File {
		if strings.HasPrefix(f.Name, prefix) && (big == nil || f.CompressedSize64 > big.CompressedSize64) {
			big = f
		}
	}
	if big == nil {
		t.Fatalf("no %s* entry in the archive", prefix)
	}
	off, err := big.DataOffset()
	if err != nil {
		t.Fatal(err)
	}
	return off, int64(big.CompressedSize64)
}

// craft builds a structurally plausible archive whose manifest lists one
// hostile entry (a path escape, or a symlink).
func craft(t *testing.T, name string, symlink bool) []byte {
	t.Helper()
	content := []byte("pwned\n")
	sum := sha256.Sum256(content)
	m := map[string]any{
		"format_version": 1, "kind": "process", "root_pid": 4242, "created": "2026-01-01T00:00:00Z",
		"processes": []map[string]any{{"pid": 4242, "name": "evil"}},
		"criu":      map[string]any{"version": 40201, "version_string": "4.2.1"},
		"host":      map[string]any{"arch": "amd64"},
		"options":   map[string]any{"network_lock": "nftables"},
		"entries":   []map[string]any{{"name": name, "size": len(content), "sha256": hex.EncodeToString(sum[:])}},
	}
	var b strings.Builder
	zw := zip.NewWriter(&b)
	h := &zip.FileHeader{Name: name, Method: zip.Store}
	if symlink {
		h.SetMode(os.ModeSymlink | 0o777)
		content = []byte("/etc/passwd")
	}
	w, err := zw.CreateHeader(h)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = w.Write(content)
	mw, _ := zw.Create("manifest.json")
	_ = json.NewEncoder(mw).Encode(m)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return []byte(b.String())
}
