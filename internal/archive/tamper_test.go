package archive

import (
	"archive/zip"
	"errors"
	"os"
	"strings"
	"testing"
)

// entryOffset returns the data offset and compressed size of an entry.
func entryOffset(t *testing.T, path, name string) (int64, int64) {
	t.Helper()
	zr, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	for _, f := range zr.File {
		if f.Name == name {
			off, err := f.DataOffset()
			if err != nil {
				t.Fatal(err)
			}
			return off, int64(f.CompressedSize64)
		}
	}
	t.Fatalf("no entry %s", name)
	return 0, 0
}

// flipByte inverts the byte at off.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[off] ^= 0xff
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestTamperedEntry(t *testing.T) {
	for _, tc := range []struct {
		name  string
		entry string
		at    func(size int64) int64
	}{
		{"random content", "images/core-42.img", func(s int64) int64 { return s / 2 }},
		{"compressed text", "images/pagemap-42.img", func(s int64) int64 { return s / 2 }},
		{"frame header", "images/pages-1.img", func(int64) int64 { return 4 }},
		{"later frame", "images/pages-1.img", func(s int64) int64 { return s - 1000 }},
		{"middle of big entry", "images/pages-1.img", func(s int64) int64 { return s / 2 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := createArchive(t, smallImages(), nil)
			off, size := entryOffset(t, path, tc.entry)
			flipByte(t, path, off+tc.at(size))
			r, err := Open(path, Limits{})
			if err != nil {
				t.Fatal(err) // content damage is found when reading content
			}
			defer r.Close()
			for _, verify := range []bool{true, false} {
				if verify {
					err = r.Verify(ExtractOptions{})
				} else {
					var parent string
					parent, err = extractInto(t, path, Limits{})
					assertOnlyOut(t, parent)
				}
				wantErr(t, err, ErrCorrupt)
				var ee *EntryError
				if !errors.As(err, &ee) || ee.Entry != tc.entry {
					t.Fatalf("error %v does not name %s", err, tc.entry)
				}
			}
		})
	}
}

func TestTamperedManifest(t *testing.T) {
	path := createArchive(t, smallImages(), nil)
	off, size := entryOffset(t, path, ManifestName)
	flipByte(t, path, off+size/2)
	_, err := Open(path, Limits{})
	wantErr(t, err, ErrCorrupt)
	if !strings.Contains(err.Error(), ManifestName) {
		t.Fatalf("error %v does not name the manifest", err)
	}
}

func TestDamagedFiles(t *testing.T) {
	valid, err := os.ReadFile(createArchive(t, smallImages(), nil))
	if err != nil {
		t.Fatal(err)
	}
	noManifest := hostileZip{noManifest: true, entries: []zipEntry{{name: "hello.txt", data: []byte("hi")}}}.write(t)
	for _, tc := range []struct {
		name string
		data []byte
		path string
		want error
	}{
		{name: "empty", data: []byte{}, want: ErrNotArchive},
		{name: "garbage", data: []byte(strings.Repeat("not a zip at all ", 100)), want: ErrNotArchive},
		{name: "one byte", data: []byte{'P'}, want: ErrNotArchive},
		{name: "truncated to half", data: valid[:len(valid)/2], want: ErrCorrupt},
		{name: "truncated by one byte", data: valid[:len(valid)-1], want: ErrCorrupt},
		{name: "cut before directory", data: valid[:len(valid)-300], want: ErrCorrupt},
		{name: "zip without manifest", path: noManifest, want: ErrNotArchive},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path
			if path == "" {
				path = t.TempDir() + "/a.zip"
				os.WriteFile(path, tc.data, 0o600)
			}
			parent, err := extractInto(t, path, Limits{})
			wantErr(t, err, tc.want)
			assertOnlyOut(t, parent)
		})
	}
	if _, err := Open(t.TempDir(), Limits{}); err == nil {
		t.Fatal("opened a directory")
	}
}

func TestOverlappingEntries(t *testing.T) {
	// Two entries whose central directory records point at the same data:
	// the classic non-recursive zip bomb layout.
	data := []byte("same bytes")
	path := hostileZip{entries: []zipEntry{{name: "images/a.img", data: data}, {name: "images/b.img", data: data}}}.write(t)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var records []int
	for i := 0; i+4 <= len(raw); i++ {
		if string(raw[i:i+4]) == "PK\x01\x02" {
			records = append(records, i)
		}
	}
	if len(records) != 3 {
		t.Fatalf("found %d central directory records", len(records))
	}
	copy(raw[records[1]+42:records[1]+46], raw[records[0]+42:records[0]+46]) // b's local header offset := a's
	os.WriteFile(path, raw, 0o600)
	parent, err := extractInto(t, path, Limits{})
	wantErr(t, err, ErrCorrupt)
	if !strings.Contains(err.Error(), "overlaps") {
		t.Fatalf("error %v does not report the overlap", err)
	}
	assertOnlyOut(t, parent)
}
