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
	written, err := putBackFiles(staging, files, false, func() error { calls++; return refused })
	if !errors.Is(err, refused) || len(written) != 0 || calls != 1 {
		t.Fatalf("written %v, err %v, %d calls", written, err, calls)
	}
	if left, _ := os.ReadDir(host); len(left) != 0 {
		t.Fatalf("the host changed: %v", left)
	}
	calls = 0
	written, err = putBackFiles(staging, files, false, func() error { calls++; return nil })
	if err != nil || len(written) != 2 || calls != 1 {
		t.Fatalf("written %v, err %v, %d calls", written, err, calls)
	}
	// Nothing to write: no check needed.
	calls = 0
	if _, err := putBackFiles(staging, files, false, func() error { calls++; return refused }); err != nil || calls != 0 {
		t.Fatalf("err %v, %d calls for files already in place", err, calls)
	}
}
