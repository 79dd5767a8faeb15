package archive

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestPerf measures Create, Extract and Verify on a real-sized input. It
// only runs when ARCHIVE_PERF_DIR names an images directory:
//
//	ARCHIVE_PERF_DIR=/dev/shm/in \
//	ARCHIVE_PERF_OUT=/tmp \
//	ARCHIVE_PERF_EXTRACT=/dev/shm \
//	go test -run TestPerf -v ./internal/archive/
//
// ARCHIVE_PERF_OUT is where the archive is written (default: a temporary
// directory), ARCHIVE_PERF_EXTRACT where it is extracted (default
// /dev/shm), ARCHIVE_PERF_RUNS the number of rounds (default 3).
func TestPerf(t *testing.T) {
	in := os.Getenv("ARCHIVE_PERF_DIR")
	if in == "" {
		t.Skip("set ARCHIVE_PERF_DIR to an images directory to measure performance")
	}
	outDir := envOr("ARCHIVE_PERF_OUT", t.TempDir())
	extractBase := envOr("ARCHIVE_PERF_EXTRACT", "/dev/shm")
	runs := 3
	if s := os.Getenv("ARCHIVE_PERF_RUNS"); s != "" {
		runs = int(s[0] - '0')
	}
	path := filepath.Join(outDir, "perf.zip")
	os.Remove(path)
	defer os.Remove(path)
	var size int64
	for range runs {
		os.Remove(path)
		start, cpu := time.Now(), cpuTime()
		var err error
		if _, size, err = Create(path, testManifest(), in, nil, WriteOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Logf("create  %v cpu %v (%d bytes)", time.Since(start).Round(time.Millisecond), (cpuTime() - cpu).Round(time.Millisecond), size)
	}
	r, err := Open(path, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for range runs {
		dir, err := os.MkdirTemp(extractBase, "perf-extract-")
		if err != nil {
			t.Fatal(err)
		}
		start, cpu := time.Now(), cpuTime()
		if err := r.Extract(dir, ExtractOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Logf("extract %v cpu %v", time.Since(start).Round(time.Millisecond), (cpuTime() - cpu).Round(time.Millisecond))
		os.RemoveAll(dir)
	}
	for range runs {
		start, cpu := time.Now(), cpuTime()
		if err := r.Verify(ExtractOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Logf("verify  %v cpu %v", time.Since(start).Round(time.Millisecond), (cpuTime() - cpu).Round(time.Millisecond))
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// cpuTime returns the user+system CPU time of the process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
