package container

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cedana/cedana/internal/testenv"
)

// FuzzApplyLayer applies any bytes as a changeset tar to an empty upper
// directory, as a restore does with the writable layer an archive
// carries. One directory per fuzzing worker, emptied between inputs (no
// temporary directory per input); beside the upper directory lies
// "../outside", which must stay empty (hostile seeds link to it). Properties: no panic; nothing is
// created outside the upper directory (not through a symlink, a hard
// link or a whiteout); no file holds more than the tar's size; an error
// is errUnsafeLayer, a tar error (a truncated tar: io.ErrUnexpectedEOF)
// or an error of the filesystem call that failed (never a bare string). Needs root (device nodes, chown, trusted
// xattrs). Seeds: testdata/fuzz/FuzzApplyLayer, changesets written by
// writeUpperDiff and the hostile ones of TestApplyRefusesEscapes
// (CEDANA_UPDATE_FUZZ_SEEDS=1 go test -run TestLayerFuzzSeeds rewrites
// them). Header checksums are fixed before each input is applied (see
// fixTarChecksums).
func FuzzApplyLayer(f *testing.F) {
	requireRoot(f)
	parent := f.TempDir()
	upper, outside := filepath.Join(parent, "upper"), filepath.Join(parent, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, layer []byte) {
		if err := os.RemoveAll(upper); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(upper, 0o755); err != nil {
			t.Fatal(err)
		}
		layer = fixTarChecksums(layer)
		_, err := applyToUpper(bytes.NewReader(layer), upper, int64(len(layer)))
		if err != nil && !typedLayerError(err) {
			t.Fatalf("untyped error %T: %v", err, err)
		}
		if ents, _ := os.ReadDir(outside); len(ents) > 0 {
			t.Fatalf("the layer wrote outside its directory: %s holds %s", outside, ents[0].Name())
		}
		if ents, _ := os.ReadDir(parent); len(ents) != 2 {
			t.Fatalf("the layer wrote beside its directory: %s holds %d entries", parent, len(ents))
		}
		_ = filepath.WalkDir(upper, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			if fi, err := d.Info(); err == nil && fi.Size() > int64(len(layer)) {
				t.Fatalf("%s holds %d bytes, more than the %d-byte layer", p, fi.Size(), len(layer))
			}
			return nil
		})
	})
}

// fixTarChecksums rewrites the checksum of every header of a tar it can
// walk (by the headers' octal sizes), so that mutations of a header reach
// applyToUpper instead of failing archive/tar's checksum (as zip CRCs
// stopped the archive fuzzer). It works on a copy.
func fixTarChecksums(b []byte) []byte {
	b = bytes.Clone(b)
	for off := 0; off+512 <= len(b); {
		h := b[off : off+512]
		if bytes.Count(h, []byte{0}) == 512 {
			break // the end-of-archive blocks
		}
		copy(h[148:156], "        ")
		sum := 0
		for _, c := range h {
			sum += int(c)
		}
		copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
		size, err := strconv.ParseUint(strings.Trim(string(h[124:136]), " \x00"), 8, 40)
		if err != nil {
			break
		}
		off += 512 + int((size+511)/512*512)
	}
	return b
}

// typedLayerError reports whether err is one applyToUpper may return.
func typedLayerError(err error) bool {
	var pe *fs.PathError
	var le *os.LinkError
	var errno syscall.Errno
	return errors.Is(err, errUnsafeLayer) || errors.Is(err, tar.ErrHeader) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.As(err, &pe) || errors.As(err, &le) || errors.As(err, &errno) ||
		strings.HasPrefix(err.Error(), "read the layer: ")
}

// TestLayerFuzzSeeds checks that FuzzApplyLayer has a committed seed
// corpus, and rewrites it with CEDANA_UPDATE_FUZZ_SEEDS=1.
func TestLayerFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzApplyLayer")
	if os.Getenv("CEDANA_UPDATE_FUZZ_SEEDS") != "" {
		requireRoot(t)
		writeLayerSeeds(t, dir)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) == 0 {
		t.Errorf("FuzzApplyLayer has no seed corpus in %s (%v)", dir, err)
	}
}

func writeLayerSeeds(t *testing.T, dir string) {
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) {
		seed := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(data)))
		if err := os.WriteFile(filepath.Join(dir, "seed-"+name), []byte(seed), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A real overlay upper directory: a changed file, a hard link, a
	// symlink, a deletion, an opaque directory, a fifo.
	src := t.TempDir()
	mustWrite(t, filepath.Join(src, "etc", "conf"), "a=1\n", 0o640)
	mustWrite(t, filepath.Join(src, "data", "big"), strings.Repeat("x", 600), 0o600)
	for _, err := range []error{
		os.Link(filepath.Join(src, "data", "big"), filepath.Join(src, "data", "big-link")),
		os.Symlink("../etc/conf", filepath.Join(src, "data", "conf-link")),
		unix.Mknod(filepath.Join(src, "etc", "deleted"), unix.S_IFCHR, 0),
		os.Mkdir(filepath.Join(src, "opaque"), 0o755),
		unix.Mkfifo(filepath.Join(src, "fifo"), 0o600),
		os.Chtimes(filepath.Join(src, "etc", "conf"), time.Unix(1e9, 0), time.Unix(1e9, 0)),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Lsetxattr(filepath.Join(src, "opaque"), overlayOpaque, []byte("y"), 0); err != nil {
		testenv.Missing(t, fmt.Sprintf("this filesystem has no trusted xattrs: %v", err))
	}
	mustWrite(t, filepath.Join(src, "opaque", "kept"), "k", 0o644)
	if err := unix.Lsetxattr(filepath.Join(src, "etc", "conf"), "user.note", []byte("v"), 0); err != nil {
		t.Logf("no user xattrs here: %v", err)
	}
	var buf bytes.Buffer
	if _, err := writeUpperDiff(&buf, src); err != nil {
		t.Fatal(err)
	}
	write("upper", buf.Bytes())

	hostile := map[string][]*tar.Header{
		"dotdot":            {{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644}},
		"absolute":          {{Name: "/etc/escape", Typeflag: tar.TypeReg, Mode: 0o644}},
		"through-link":      {{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../outside"}, {Name: "l/escape", Typeflag: tar.TypeReg, Mode: 0o644}},
		"whiteout-via-link": {{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../outside"}, {Name: "l/.wh.x", Typeflag: tar.TypeReg}},
		"hard-link-out":     {{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}},
		"link-to-link":      {{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../outside/f"}, {Name: "h", Typeflag: tar.TypeLink, Linkname: "l"}},
		"dir-over-link":     {{Name: "d", Typeflag: tar.TypeSymlink, Linkname: "../outside"}, {Name: "d", Typeflag: tar.TypeDir, Mode: 0o755}, {Name: "d/f", Typeflag: tar.TypeReg}},
		"opaque-via-link":   {{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../outside"}, {Name: "l/.wh..wh..opq", Typeflag: tar.TypeReg}},
		"bad-whiteout":      {{Name: ".wh..", Typeflag: tar.TypeReg}},
		"device":            {{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666}},
		"xattrs":            {{Name: "x", Typeflag: tar.TypeReg, PAXRecords: map[string]string{"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.a": "b"}}},
	}
	for name, hdrs := range hostile {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range hdrs {
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
		}
		tw.Close()
		write(name, b.Bytes())
	}
}
