package checkpoint

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/archive"
)

// TestCollectorStagesABusyPagesImage: when CRIU sends a second pages image
// while the first is still streaming into the archive, the second goes to
// the staging directory and into the archive afterwards; both arrive
// intact.
func TestCollectorStagesABusyPagesImage(t *testing.T) {
	dir := t.TempDir()
	staging := filepath.Join(dir, "staging")
	if err := os.Mkdir(staging, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "ckpt.zip")
	w, err := archive.NewWriter(path, archive.WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	col := newImageCollector(w, staging, nil)
	first := bytes.Repeat([]byte("first pages "), 100_000)
	second := bytes.Repeat([]byte("second pages "), 100_000)

	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- col.sink("pages-1.img", pr) }()
	// Let the first image take the writer, then send the second.
	if _, err := pw.Write(first[:1000]); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := col.sink("pages-2.img", bytes.NewReader(second)); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < pagesWait {
		t.Fatalf("the second image did not wait for the writer (%v)", waited)
	}
	if _, err := os.Stat(filepath.Join(staging, "pages-2.img")); err != nil {
		t.Fatalf("the second image was not staged: %v", err)
	}
	if _, err := pw.Write(first[1000:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := col.finish(); err != nil {
		t.Fatal(err)
	}
	m := &archive.Manifest{Kind: archive.KindProcess, Created: time.Now(), Cedana: "test", RootPID: 1,
		Processes: []archive.Process{{PID: 1, Name: "init"}}, Options: archive.DumpOptions{NetworkLock: "skip"}}
	if _, _, err := w.Close(m, nil); err != nil {
		t.Fatal(err)
	}

	r, err := archive.Open(path, archive.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for name, want := range map[string][]byte{"images/pages-1.img": first, "images/pages-2.img": second} {
		var got bytes.Buffer
		if err := r.StreamEntry(name, &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("%s: %d bytes that differ from the %d sent", name, got.Len(), len(want))
		}
	}
}
