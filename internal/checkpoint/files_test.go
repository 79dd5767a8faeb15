package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cedana/cedana/internal/archive"
)

// TestPutBackFilesAsksFirst: nothing changes on the host when the check
// run before the first write fails, and the check runs once.
func TestPutBackFilesAsksFirst(t *testing.T) {
	staging, host := t.TempDir(), t.TempDir()
	if err := os.MkdirAll(filepath.Join(staging, "files"), 0o700); err != nil {
		t.Fatal(err)
	}
	var files []archive.CarriedFile
	for i, name := range []string{"a.log", "b.log"} {
		entry := "files/" + string(rune('0'+i))
		if err := os.WriteFile(filepath.Join(staging, entry), []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, archive.CarriedFile{Path: filepath.Join(host, name), Entry: entry, Size: 4, Mode: 0o600})
	}
	refused := errors.New("archive damaged")
	calls := 0
	pb, err := putBackFiles(staging, files, false, func() error { calls++; return refused })
	if !errors.Is(err, refused) || len(pb.written) != 0 || calls != 1 {
		t.Fatalf("written %v, err %v, %d calls", pb.written, err, calls)
	}
	if left, _ := os.ReadDir(host); len(left) != 0 {
		t.Fatalf("the host changed: %v", left)
	}
	calls = 0
	pb, err = putBackFiles(staging, files, false, func() error { calls++; return nil })
	if err != nil || len(pb.written) != 2 || calls != 1 {
		t.Fatalf("written %v, err %v, %d calls", pb.written, err, calls)
	}
	// Nothing to write: no check needed.
	calls = 0
	if _, err := putBackFiles(staging, files, false, func() error { calls++; return refused }); err != nil || calls != 0 {
		t.Fatalf("err %v, %d calls for files already in place", err, calls)
	}
}

// TestPutBackUndo: undo removes the files and directories written and puts
// a replaced file back; a failure midway undoes the files already written.
func TestPutBackUndo(t *testing.T) {
	staging, host := t.TempDir(), t.TempDir()
	if err := os.MkdirAll(filepath.Join(staging, "files"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, e := range []string{"0", "1"} {
		if err := os.WriteFile(filepath.Join(staging, "files", e), []byte("archived"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	replaced := filepath.Join(host, "old.log")
	if err := os.WriteFile(replaced, []byte("host copy, longer"), 0o600); err != nil {
		t.Fatal(err)
	}
	files := []archive.CarriedFile{
		{Path: filepath.Join(host, "new", "deep", "a.log"), Entry: "files/0", Size: 8, Mode: 0o600},
		{Path: replaced, Entry: "files/1", Size: 8, Mode: 0o600},
	}
	pb, err := putBackFiles(staging, files, true, nil)
	if err != nil || len(pb.written) != 2 {
		t.Fatalf("written %v, err %v", pb.written, err)
	}
	if left := pb.undo(); len(left) != 0 {
		t.Fatal(left)
	}
	if _, err := os.Lstat(filepath.Join(host, "new")); err == nil {
		t.Fatal("undo left the created directories")
	}
	if data, err := os.ReadFile(replaced); err != nil || string(data) != "host copy, longer" {
		t.Fatalf("the replaced file was not put back: %q, %v", data, err)
	}
	if entries, _ := os.ReadDir(host); len(entries) != 1 {
		t.Fatalf("host holds %v after undo", entries)
	}

	// The second file's directory is a regular file: the first is undone.
	blocker := filepath.Join(host, "blocker")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	files[1] = archive.CarriedFile{Path: filepath.Join(blocker, "b.log"), Entry: "files/1", Size: 8, Mode: 0o600}
	if _, err := putBackFiles(staging, files, false, nil); err == nil {
		t.Fatal("put back through a regular file")
	}
	if _, err := os.Lstat(filepath.Join(host, "new")); err == nil {
		t.Fatal("a failed put back left the first file's directories")
	}
}

// TestPutBackRefusesSymlinkedDirectory: no directory is created through a
// symlink on the way to a carried file.
func TestPutBackRefusesSymlinkedDirectory(t *testing.T) {
	staging, host, elsewhere := t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.MkdirAll(filepath.Join(staging, "files"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staging, "files", "0"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(host, "link")); err != nil {
		t.Fatal(err)
	}
	files := []archive.CarriedFile{{Path: filepath.Join(host, "link", "sub", "a.log"), Entry: "files/0", Size: 1, Mode: 0o600}}
	if _, err := putBackFiles(staging, files, false, nil); !errors.Is(err, errUnsafeFile) {
		t.Fatalf("err %v, want errUnsafeFile", err)
	}
	if left, _ := os.ReadDir(elsewhere); len(left) != 0 {
		t.Fatalf("created %v through the symlink", left)
	}
}
