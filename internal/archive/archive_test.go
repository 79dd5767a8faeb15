package archive

import (
	"archive/zip"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cedana/cedana/internal/fault"
)

func TestRoundTrip(t *testing.T) {
	images := smallImages()
	srcDir := t.TempDir()
	carried := []byte("log line 1\nlog line 2\n")
	if err := os.WriteFile(filepath.Join(srcDir, "app.log"), carried, 0o644); err != nil {
		t.Fatal(err)
	}
	files := []FileSource{
		{Source: filepath.Join(srcDir, "app.log"), Meta: CarriedFile{Path: "/var/log/app.log", Mode: 0o644, UID: 1000, GID: 1000}},
		{Source: filepath.Join(srcDir, "app.log"), Meta: CarriedFile{Path: "/var/log/copy.log", Mode: 0o600}},
	}
	path := filepath.Join(t.TempDir(), "ckpt.zip")
	m := testManifest()
	var progress []int64
	got, size, err := Create(path, m, writeImages(t, images), files, WriteOptions{
		Progress: func(n int64) { progress = append(progress, n) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if got != m || m.FormatVersion != FormatVersion {
		t.Fatalf("Create did not complete the caller's manifest")
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != size || fi.Mode().Perm() != 0o600 {
		t.Fatalf("archive: %v, size %d (Create said %d), mode %v", err, fi.Size(), size, fi.Mode())
	}
	var total int64
	for _, d := range images {
		total += int64(len(d))
	}
	total += 2 * int64(len(carried))
	if len(progress) == 0 || progress[len(progress)-1] != total || !slices.IsSorted(progress) {
		t.Errorf("progress %v, want increasing up to %d", progress, total)
	}
	if !slices.IsSortedFunc(m.Entries, func(a, b EntryInfo) int { return strings.Compare(a.Name, b.Name) }) {
		t.Errorf("entries not sorted: %v", m.Entries)
	}
	if len(m.CarriedFiles) != 2 || m.CarriedFiles[1].Entry != "files/1" || m.CarriedFiles[1].Size != int64(len(carried)) || m.CarriedFiles[0].UID != 1000 {
		t.Errorf("carried files: %+v", m.CarriedFiles)
	}
	if m.ImagesSize() != total-2*int64(len(carried)) {
		t.Errorf("ImagesSize %d", m.ImagesSize())
	}
	// No temporary file is left next to the archive.
	if des, _ := os.ReadDir(filepath.Dir(path)); len(des) != 1 {
		t.Errorf("archive directory holds %d files", len(des))
	}

	r, err := Open(path, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Manifest.RootPID != 42 || len(r.Manifest.Entries) != len(images)+2 || r.Size != size {
		t.Fatalf("manifest read back: %+v", r.Manifest)
	}
	if err := r.Verify(ExtractOptions{Concurrency: 3}); err != nil {
		t.Fatal(err)
	}
	for _, conc := range []int{0, 1, 4} {
		parent := t.TempDir()
		dir := filepath.Join(parent, "out")
		os.Mkdir(dir, 0o700)
		var last int64
		if err := r.Extract(dir, ExtractOptions{Concurrency: conc, Progress: func(n int64) { last = n }}); err != nil {
			t.Fatal(err)
		}
		if last != total {
			t.Errorf("extract progress ended at %d, want %d", last, total)
		}
		assertOnlyOut(t, parent)
		for name, want := range images {
			p := filepath.Join(dir, "images", name)
			data, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(data, want) {
				t.Fatalf("%s: %v, %d bytes, want %d", name, err, len(data), len(want))
			}
			if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
				t.Errorf("%s mode %v", name, fi.Mode())
			}
		}
		for i := range files {
			data, err := os.ReadFile(filepath.Join(dir, "files", fileEntryName(i)[len(FilesPrefix):]))
			if err != nil || !bytes.Equal(data, carried) {
				t.Fatalf("files/%d: %v %q", i, err, data)
			}
		}
		if fi, _ := os.Stat(filepath.Join(dir, "images")); fi.Mode().Perm() != 0o700 {
			t.Errorf("images dir mode %v", fi.Mode())
		}
	}
}

func TestArchiveIsStandardZip(t *testing.T) {
	path := createArchive(t, smallImages(), nil)
	zr, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	last := zr.File[len(zr.File)-1]
	if last.Name != ManifestName || last.Method != zip.Store {
		t.Fatalf("last entry %q method %d, want stored %s", last.Name, last.Method, ManifestName)
	}
	for _, f := range zr.File[:len(zr.File)-1] {
		if f.Method != methodZstd || f.Mode() != 0o600 {
			t.Errorf("%s: method %d mode %v", f.Name, f.Method, f.Mode())
		}
	}
}

func TestExtractNeedsEmptyDir(t *testing.T) {
	r, err := Open(createArchive(t, smallImages(), nil), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x"), nil, 0o600)
	if err := r.Extract(dir, ExtractOptions{}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("extract into non-empty dir: %v", err)
	}
	if err := r.Extract(filepath.Join(dir, "missing"), ExtractOptions{}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("extract into missing dir: %v", err)
	}
}

func TestCreateRefusesExistingPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ckpt.zip")
	os.WriteFile(path, []byte("precious"), 0o600)
	_, _, err := Create(path, testManifest(), writeImages(t, smallImages()), nil, WriteOptions{})
	wantErr(t, err, fs.ErrExist)
	if data, _ := os.ReadFile(path); string(data) != "precious" {
		t.Fatal("existing file was modified")
	}
	// The final link step refuses too, if the file appears during Create.
	tmp, _ := os.CreateTemp(filepath.Dir(path), "x")
	tmp.Close()
	wantErr(t, publish(tmp.Name(), path, true), fs.ErrExist)
}

func TestCreateIsAtomic(t *testing.T) {
	images := writeImages(t, smallImages())
	for name, tc := range map[string]struct {
		images string
		files  []FileSource
		m      *Manifest
	}{
		"missing carried source":  {images, []FileSource{{Source: "/nonexistent/file", Meta: CarriedFile{Path: "/a"}}}, testManifest()},
		"carried source is a dir": {images, []FileSource{{Source: t.TempDir(), Meta: CarriedFile{Path: "/a"}}}, testManifest()},
		"relative carried path":   {images, []FileSource{{Source: "/etc/hostname", Meta: CarriedFile{Path: "a"}}}, testManifest()},
		"duplicate carried path": {images, []FileSource{
			{Source: filepath.Join(images, "inventory.img"), Meta: CarriedFile{Path: "/a"}},
			{Source: filepath.Join(images, "inventory.img"), Meta: CarriedFile{Path: "/a"}},
		}, testManifest()},
		"bad manifest":      {images, nil, &Manifest{Kind: "vm"}},
		"missing images":    {"/nonexistent", nil, testManifest()},
		"symlink in images": {withSymlink(t), nil, testManifest()},
		"subdir in images":  {withSubdir(t), nil, testManifest()},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "ckpt.zip")
			before := *tc.m
			if _, _, err := Create(path, tc.m, tc.images, tc.files, WriteOptions{}); err == nil {
				t.Fatal("Create succeeded")
			}
			if des, _ := os.ReadDir(dir); len(des) != 0 {
				t.Fatalf("Create left %s behind", des[0].Name())
			}
			if tc.m.FormatVersion != before.FormatVersion || len(tc.m.Entries) != 0 {
				t.Fatal("Create modified the manifest on error")
			}
		})
	}
}

func withSymlink(t *testing.T) string {
	dir := writeImages(t, map[string][]byte{"a.img": []byte("a")})
	os.Symlink("/etc/passwd", filepath.Join(dir, "b.img"))
	return dir
}

func withSubdir(t *testing.T) string {
	dir := writeImages(t, map[string][]byte{"a.img": []byte("a")})
	os.Mkdir(filepath.Join(dir, "sub"), 0o700)
	return dir
}

func TestCreateTempFileName(t *testing.T) {
	f, err := createTemp(filepath.Join(t.TempDir(), "missing", "ckpt.zip"))
	if err == nil {
		f.Close()
		os.Remove(f.Name())
		t.Fatal("temp file in a missing directory")
	}
	dir := t.TempDir()
	f, err = createTemp(filepath.Join(dir, "ckpt.zip"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	if !strings.HasPrefix(filepath.Base(f.Name()), ".ckpt.zip.partial-") || fi.Mode().Perm() != 0o600 {
		t.Fatalf("temp file %s mode %v", f.Name(), fi.Mode())
	}
}

func TestEmptyArchive(t *testing.T) {
	path := createArchive(t, nil, nil)
	parent, err := extractInto(t, path, Limits{})
	wantErr(t, err, nil)
	assertOnlyOut(t, parent)
}

// A transient archive (a migration's) is as complete and verifiable as
// any, but never waits for the disk: the fsync the durable path needs is
// not done (an injected fsync failure cannot reach it), while the same
// failure still fails a durable Create and leaves nothing behind.
func TestCreateTransient(t *testing.T) {
	images := smallImages()
	images["pages-1.img"] = bytes.Repeat([]byte("0123456789abcdef"), 3*sinkChunk/16+1000) // past the sink's first chunk
	dir := writeImages(t, images)
	failFsync := fault.Steps(fault.ArchiveFsync)

	out := t.TempDir()
	path := filepath.Join(out, "transient.zip")
	if _, size, err := Create(path, testManifest(), dir, nil, WriteOptions{Transient: true, Fault: failFsync}); err != nil {
		t.Fatalf("transient Create: %v", err)
	} else if fi, err := os.Stat(path); err != nil || fi.Size() != size {
		t.Fatalf("transient archive: %v (size %d, want %d)", err, fi.Size(), size)
	}
	r, err := Open(path, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Verify(ExtractOptions{}); err != nil {
		t.Fatalf("transient archive does not verify: %v", err)
	}

	durable := filepath.Join(out, "durable.zip")
	if _, _, err := Create(durable, testManifest(), dir, nil, WriteOptions{Fault: failFsync}); err == nil {
		t.Fatal("durable Create succeeded through a failed fsync")
	}
	if _, err := os.Stat(durable); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a durable Create whose fsync failed left %s: %v", durable, err)
	}
}
