package archive

import (
	"github.com/zeebo/xxh3"

	"archive/zip"
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// testManifest returns a valid manifest without entries.
func testManifest() *Manifest {
	return &Manifest{
		Kind:      KindProcess,
		Created:   time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		Cedana:    "test",
		RootPID:   42,
		Processes: []Process{{PID: 42, PPID: 1, Name: "sleep"}},
	}
}

// randomBytes returns n pseudo-random (incompressible) bytes.
func randomBytes(seed uint64, n int) []byte {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	b := make([]byte, n)
	r.Read(b)
	return b
}

// textBytes returns n bytes of compressible text.
func textBytes(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		b.WriteString("line ")
		b.WriteString(strings.Repeat("x", i%17))
		b.WriteString(" pid=4711 state=running\n")
	}
	return b.Bytes()[:n]
}

// writeImages creates a flat images directory holding files.
func writeImages(t testing.TB, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// createArchive writes an archive of images (and carried files) into a
// fresh directory and returns its path.
func createArchive(t testing.TB, images map[string][]byte, files []FileSource) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ckpt.zip")
	if _, _, err := Create(path, testManifest(), writeImages(t, images), files, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	return path
}

// smallImages is the content of a typical small archive.
func smallImages() map[string][]byte {
	return map[string][]byte{
		"core-42.img":    randomBytes(1, 3000),
		"inventory.img":  []byte("inventory"),
		"pages-1.img":    append(textBytes(6<<20), randomBytes(2, 3<<20)...), // 3 frames
		"pagemap-42.img": textBytes(5000),
		"empty.img":      nil,
	}
}

// extractInto extracts the archive at path into a new directory "out"
// inside a fresh parent, and returns the extraction error and the parent.
func extractInto(t testing.TB, path string, lim Limits) (string, error) {
	return extractIntoOpts(t, path, lim, ExtractOptions{})
}

// extractIntoOpts is extractInto with options.
func extractIntoOpts(t testing.TB, path string, lim Limits, opts ExtractOptions) (string, error) {
	t.Helper()
	parent := t.TempDir()
	dir := filepath.Join(parent, "out")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	r, err := Open(path, lim)
	if err != nil {
		return parent, err
	}
	defer r.Close()
	return parent, r.Extract(dir, opts)
}

// assertOnlyOut fails unless parent contains nothing but "out", and "out"
// contains nothing but regular files under images/ and files/.
func assertOnlyOut(t testing.TB, parent string) {
	t.Helper()
	des, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(des) != 1 || des[0].Name() != "out" {
		var names []string
		for _, de := range des {
			names = append(names, de.Name())
		}
		t.Fatalf("extraction wrote outside its directory: %s holds %v", parent, names)
	}
	out := filepath.Join(parent, "out")
	err = filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(out, p)
		switch {
		case rel == ".", rel == "images", rel == "files", rel == "container":
			if !d.IsDir() {
				t.Errorf("%s is not a directory", rel)
			}
		case strings.HasPrefix(rel, "images/"), strings.HasPrefix(rel, "files/"), strings.HasPrefix(rel, "container/"):
			if !d.Type().IsRegular() || strings.Count(rel, "/") != 1 {
				t.Errorf("unexpected %s (%v)", rel, d.Type())
			}
		default:
			t.Errorf("unexpected %s", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// zipEntry is one entry of a hand-made zip.
type zipEntry struct {
	name   string
	data   []byte
	mode   fs.FileMode // 0 means 0600
	method uint16      // 0 means zstd, except for raw entries (0 = store)
	// raw, if set, is written as the entry's compressed bytes with the
	// header's uncompressed size set to rawSize.
	raw     []byte
	rawSize uint64
	flags   uint16
}

// hostileZip builds a zip file from entries. If manifest is nil, a valid
// one is generated listing every entry named images/* or files/* with its
// real size and digest (use editManifest to change it); set noManifest to
// leave it out.
type hostileZip struct {
	entries      []zipEntry
	manifest     []byte
	noManifest   bool
	editManifest func(*Manifest)
}

func (hz hostileZip) write(t testing.TB) string {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(true))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	m := testManifest()
	m.FormatVersion = FormatVersion
	// Every entry is written raw, from stored bytes computed here, so
	// that the manifest can record their digests.
	stored := map[string][]byte{}
	for _, e := range hz.entries {
		fh := &zip.FileHeader{Name: e.name, Method: e.method, Flags: e.flags}
		mode := e.mode
		if mode == 0 {
			mode = 0o600
		}
		fh.SetMode(mode)
		var raw []byte
		switch {
		case strings.HasSuffix(e.name, "/"): // a directory: no data
		case e.raw != nil:
			raw = e.raw
			fh.UncompressedSize64 = e.rawSize
		case e.method == methodStore:
			fh.Method = methodZstd
			raw = enc.EncodeAll(e.data, nil)
		case e.method == methodDeflate:
			var b bytes.Buffer
			fw, _ := flate.NewWriter(&b, flate.DefaultCompression)
			fw.Write(e.data)
			fw.Close()
			raw = b.Bytes()
		default:
			raw = enc.EncodeAll(e.data, nil)
		}
		if e.raw == nil && raw != nil {
			fh.UncompressedSize64 = uint64(len(e.data))
			fh.CRC32 = crc32.ChecksumIEEE(e.data)
		}
		fh.CompressedSize64 = uint64(len(raw))
		w, err := zw.CreateRaw(fh)
		if err == nil && len(raw) > 0 {
			_, err = w.Write(raw)
		}
		if err != nil {
			t.Fatal(err)
		}
		stored[e.name] = raw
		if strings.HasPrefix(e.name, ImagesPrefix) || strings.HasPrefix(e.name, FilesPrefix) {
			size := int64(len(e.data))
			if e.raw != nil {
				size = int64(e.rawSize)
			}
			if !slices.ContainsFunc(m.Entries, func(x EntryInfo) bool { return x.Name == e.name }) {
				sum := sha256.Sum256(raw)
				xx := xxh3.Hash128(raw).Bytes()
				m.Entries = append(m.Entries, EntryInfo{Name: e.name, Size: size,
					StoredSHA256: hex.EncodeToString(sum[:]), StoredXXH3: hex.EncodeToString(xx[:]),
					StoredCRC32C: fmt.Sprintf("%08x", crc32.Checksum(raw, castagnoli))})
			}
			if strings.HasPrefix(e.name, FilesPrefix) {
				m.CarriedFiles = append(m.CarriedFiles, CarriedFile{Path: "/tmp/" + e.name[len(FilesPrefix):], Entry: e.name, Size: size})
			}
		}
	}
	if hz.editManifest != nil {
		hz.editManifest(m)
	}
	mdata := hz.manifest
	if mdata == nil {
		if mdata, err = json.Marshal(m); err != nil {
			t.Fatal(err)
		}
	}
	if !hz.noManifest {
		fh := &zip.FileHeader{Name: ManifestName, Method: methodDeflate}
		fh.SetMode(0o600)
		w, err := zw.CreateHeader(fh)
		if err == nil {
			_, err = w.Write(mdata)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "hostile.zip")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// wantErr fails unless err wraps want (or is nil when want is nil).
func wantErr(t testing.TB, err, want error) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if !errors.Is(err, want) {
		t.Fatalf("error %v does not wrap %v", err, want)
	}
}
