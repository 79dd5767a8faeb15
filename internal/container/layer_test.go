package container

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cedana/cedana/internal/testenv"
)

// requireRoot skips (in CI: fails) tests that create device nodes and
// trusted xattrs.
func requireRoot(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t, "device nodes and trusted.* xattrs")
}

// TestLayerRoundTrip writes an overlay upper directory as a changeset and
// applies it to an empty upper directory: every kind of change survives.
func TestLayerRoundTrip(t *testing.T) {
	requireRoot(t)
	src := t.TempDir()
	mustWrite(t, filepath.Join(src, "etc", "conf"), "a=1\n", 0o640)
	mustWrite(t, filepath.Join(src, "data", "big"), strings.Repeat("x", 100000), 0o600)
	if err := os.Link(filepath.Join(src, "data", "big"), filepath.Join(src, "data", "big-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../etc/conf", filepath.Join(src, "data", "conf-link")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(src, "etc", "deleted"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(src, "opaque"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(src, "opaque"), overlayOpaque, []byte("y"), 0); err != nil {
		testenv.Missing(t, fmt.Sprintf("this filesystem has no trusted xattrs: %v", err))
	}
	mustWrite(t, filepath.Join(src, "opaque", "kept"), "k", 0o644)
	if err := unix.Mkfifo(filepath.Join(src, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(src, "etc", "conf"), 1000, 1001); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(src, "etc", "conf"), mtime, mtime); err != nil {
		t.Fatal(err)
	}

	var buf bytes.Buffer
	stats, err := writeUpperDiff(&buf, src)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Whiteouts != 2 {
		t.Errorf("whiteouts: got %d, want 2 (a deletion and an opaque directory)", stats.Whiteouts)
	}
	names := tarNames(t, buf.Bytes())
	for _, want := range []string{"etc/.wh.deleted", "opaque/.wh..wh..opq", "data/big-link"} {
		if !names[want] {
			t.Errorf("changeset lacks %s; has %v", want, names)
		}
	}

	dst := t.TempDir()
	if _, err := applyToUpper(bytes.NewReader(buf.Bytes()), dst, int64(buf.Len())); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, filepath.Join(dst, "etc", "conf")); got != "a=1\n" {
		t.Errorf("etc/conf: %q", got)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(dst, "etc", "conf"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 1000 || st.Gid != 1001 || st.Mode&0o7777 != 0o640 || st.Mtim.Sec != mtime.Unix() {
		t.Errorf("etc/conf metadata: uid %d gid %d mode %o mtime %d", st.Uid, st.Gid, st.Mode&0o7777, st.Mtim.Sec)
	}
	var a, b syscall.Stat_t
	_ = syscall.Lstat(filepath.Join(dst, "data", "big"), &a)
	_ = syscall.Lstat(filepath.Join(dst, "data", "big-link"), &b)
	if a.Ino != b.Ino || a.Size != 100000 {
		t.Errorf("hard link not kept: inodes %d %d, size %d", a.Ino, b.Ino, a.Size)
	}
	if l, err := os.Readlink(filepath.Join(dst, "data", "conf-link")); err != nil || l != "../etc/conf" {
		t.Errorf("symlink: %q %v", l, err)
	}
	if err := syscall.Lstat(filepath.Join(dst, "etc", "deleted"), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout not restored as a 0/0 character device: %v mode %o", err, st.Mode)
	}
	if v, ok := getXattr(filepath.Join(dst, "opaque"), overlayOpaque); !ok || v != "y" {
		t.Errorf("opaque directory not marked: %q %v", v, ok)
	}
	if err := syscall.Lstat(filepath.Join(dst, "fifo"), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFIFO {
		t.Errorf("fifo: %v", err)
	}
}

// TestChangedSince carries the files of a plain rootfs changed after a time.
func TestChangedSince(t *testing.T) {
	root := t.TempDir()
	old := time.Now().Add(-time.Hour)
	mustWrite(t, filepath.Join(root, "bin", "old"), "o", 0o755)
	since := time.Now()
	mustWrite(t, filepath.Join(root, "var", "lib", "new"), "n", 0o644)
	_ = os.Chtimes(filepath.Join(root, "bin", "old"), old, old)
	var buf bytes.Buffer
	if _, err := writeChangedSince(&buf, root, since); err != nil {
		t.Fatal(err)
	}
	names := tarNames(t, buf.Bytes())
	if !names["var/lib/new"] || !names["var/lib/"] {
		t.Errorf("new file or its parents missing: %v", names)
	}
	// bin/old's ctime is new (Chtimes changes it): only its mtime is old,
	// so it is carried too; what matters is that nothing is lost.
}

// TestApplyRefusesEscapes feeds hostile changesets.
func TestApplyRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	cases := map[string][]*tar.Header{
		"dotdot":       {{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644}},
		"absolute":     {{Name: "/etc/escape", Typeflag: tar.TypeReg, Mode: 0o644}},
		"through link": {{Name: "l", Typeflag: tar.TypeSymlink, Linkname: outside}, {Name: "l/escape", Typeflag: tar.TypeReg, Mode: 0o644}},
		"whiteout via link": {{Name: "l", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "l/.wh.x", Typeflag: tar.TypeReg}},
		"hard link out": {{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}},
		"bad whiteout":  {{Name: ".wh..", Typeflag: tar.TypeReg}},
	}
	for name, hdrs := range cases {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, h := range hdrs {
				if err := tw.WriteHeader(h); err != nil {
					t.Fatal(err)
				}
			}
			tw.Close()
			_, err := applyToUpper(&buf, t.TempDir(), int64(buf.Len()))
			if !errors.Is(err, errUnsafeLayer) {
				t.Fatalf("want errUnsafeLayer, got %v", err)
			}
			if ents, _ := os.ReadDir(outside); len(ents) > 0 {
				t.Fatalf("something was written outside the layer: %v", ents)
			}
		})
	}
}

func TestCleanEntryName(t *testing.T) {
	for in, want := range map[string]string{"./a/b": "a/b", "a//b/": "a/b", ".": "", "./": "", "a/../b": "b"} {
		if got, err := cleanEntryName(in); err != nil || got != want {
			t.Errorf("cleanEntryName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"..", "../a", "/a", "a/../../b", "a\x00b"} {
		if _, err := cleanEntryName(in); err == nil {
			t.Errorf("cleanEntryName(%q) accepted", in)
		}
	}
}

// FuzzCleanEntryName: no entry name may lead outside the layer.
func FuzzCleanEntryName(f *testing.F) {
	for _, s := range []string{"a/b", "../x", "/etc/passwd", "./a/../../b", "a/./b/", ".wh..wh..opq", "a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		rel, err := cleanEntryName(name)
		if err != nil {
			return
		}
		if rel == "" {
			return
		}
		root := "/layer"
		p := filepath.Join(root, rel)
		if !strings.HasPrefix(p, root+"/") || strings.Contains(rel, "\x00") {
			t.Fatalf("cleanEntryName(%q) = %q leads to %s", name, rel, p)
		}
	})
}

func mustWrite(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func tarNames(t *testing.T, data []byte) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names[h.Name] = true
	}
	return names
}
