package archive

import (
	"os"
	"testing"
	"time"
)

func TestVerifyOnly(t *testing.T) {
	p := os.Getenv("VERIFY_ZIP")
	if p == "" {
		t.Skip()
	}
	if _, err := os.Stat(p); err != nil {
		if _, _, err := Create(p, testManifest(), os.Getenv("ARCHIVE_PERF_DIR"), nil, WriteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := Open(p, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for range 2 {
		start := time.Now()
		if os.Getenv("VERIFY_EXTRACT") != "" {
			dir, _ := os.MkdirTemp("/dev/shm", "x")
			if err := r.Extract(dir, ExtractOptions{}); err != nil {
				t.Fatal(err)
			}
			os.RemoveAll(dir)
		} else if err := r.Verify(ExtractOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Log(time.Since(start))
	}
}
