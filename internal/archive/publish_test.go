package archive

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestExport: a whole archive is copied and published; a truncated one is
// refused with nothing left at the destination; an existing file is never
// replaced.
func TestExport(t *testing.T) {
	src := createArchive(t, smallImages(), nil)
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dst := filepath.Join(dir, "copy.zip")
	if err := Export(bytes.NewReader(data), int64(len(data)), dst); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, data) {
		t.Fatal("exported archive differs from its source")
	}
	if err := Export(bytes.NewReader(data), int64(len(data)), dst); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("export over an existing file: %v, want ErrExist", err)
	}
	bad := data[:len(data)-100] // cut short: no central directory
	dst2 := filepath.Join(dir, "bad.zip")
	if err := Export(bytes.NewReader(bad), int64(len(bad)), dst2); err == nil {
		t.Fatal("a damaged archive was exported")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("the failed export left files behind: %v", entries)
	}
}
