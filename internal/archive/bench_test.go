package archive

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Performance measurements.
//
// The Go benchmarks use a synthetic images directory of ARCHIVE_BENCH_MB
// MiB (default 64): pages-1.img, half random bytes and half text lines,
// plus a few small images. Scratch files go to /dev/shm when it exists.
//
//	go test -run XXX -bench . -benchtime 5x ./internal/archive/
//
// TestPerf times Create, Extract and Verify on a given directory, with
// wall and CPU time, for the real-size measurement:
//
//	ARCHIVE_PERF_DIR=/dev/shm/in ARCHIVE_PERF_OUT=/tmp \
//	go test -run TestPerf -v ./internal/archive/
//
// ARCHIVE_PERF_GEN=<MiB> first generates the synthetic input of that size
// into ARCHIVE_PERF_DIR (if it does not exist yet). ARCHIVE_PERF_OUT is
// where the archive is written (default: a temporary directory; use a disk
// to include fsync), ARCHIVE_PERF_EXTRACT where it is extracted (default
// /dev/shm), ARCHIVE_PERF_RUNS the number of rounds (default 3).

// scratchDir returns a fresh directory on tmpfs if possible.
func scratchDir(tb testing.TB) string {
	tb.Helper()
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		dir, err := os.MkdirTemp("/dev/shm", "archive-bench-")
		if err == nil {
			tb.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return tb.TempDir()
}

// genImages writes the synthetic input into dir: pages-1.img of size
// bytes (first half random, second half text) and a few small images.
func genImages(tb testing.TB, dir string, size int64) {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "pages-1.img"))
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	w.Write(randomBytes(7, int(size/2)))
	words := []string{"alpha", "beta", "gamma", "delta", "process", "memory", "page", "kernel", "socket", "thread"}
	for i, n := 0, size/2; n > 0; i++ {
		line := fmt.Sprintf("%d: %s %s %s count=%d\n", i, words[i%len(words)], words[(i/3)%len(words)], words[(i/7)%len(words)], i%1000)
		line = line[:min(int64(len(line)), n)]
		w.WriteString(line)
		n -= int64(len(line))
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	f.Close()
	for name, data := range map[string][]byte{
		"core-1.img":      randomBytes(8, 70000),
		"mm-1.img":        textBytes(4096),
		"pagemap-1.img":   textBytes(100),
		"inventory.img":   []byte("inventory"),
		"fdinfo-2.img":    randomBytes(9, 300),
		"files.img":       textBytes(20000),
		"tty-info.img":    nil,
		"pstree.img":      []byte{1, 2, 3},
		"ids-1.img":       randomBytes(10, 40),
		"seccomp.img":     nil,
		"fs-1.img":        textBytes(30),
		"timens-0.img":    randomBytes(11, 20),
		"utsns-12.img":    textBytes(64),
		"ipcns-var-1.img": textBytes(200),
	} {
		os.WriteFile(filepath.Join(dir, name), data, 0o600)
	}
}

// benchInput returns a synthetic images directory and its total size.
func benchInput(b *testing.B) (string, int64) {
	mb := int64(64)
	if s := os.Getenv("ARCHIVE_BENCH_MB"); s != "" {
		mb, _ = strconv.ParseInt(s, 10, 64)
	}
	dir := filepath.Join(scratchDir(b), "images")
	genImages(b, dir, mb<<20)
	var total int64
	des, _ := os.ReadDir(dir)
	for _, de := range des {
		fi, _ := de.Info()
		total += fi.Size()
	}
	return dir, total
}

func BenchmarkCreate(b *testing.B) {
	in, total := benchInput(b)
	out := scratchDir(b)
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		path := filepath.Join(out, strconv.Itoa(i)+".zip")
		_, size, err := Create(path, testManifest(), in, nil, WriteOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(size)/float64(total), "ratio")
		os.Remove(path)
	}
}

// openBench creates an archive of the synthetic input and opens it.
func openBench(b *testing.B) (*Reader, int64) {
	in, total := benchInput(b)
	path := filepath.Join(scratchDir(b), "bench.zip")
	if _, _, err := Create(path, testManifest(), in, nil, WriteOptions{}); err != nil {
		b.Fatal(err)
	}
	r, err := Open(path, Limits{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	return r, total
}

func BenchmarkExtract(b *testing.B) {
	r, total := openBench(b)
	base := scratchDir(b)
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		dir := filepath.Join(base, strconv.Itoa(i))
		os.Mkdir(dir, 0o700)
		if err := r.Extract(dir, ExtractOptions{}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}

func BenchmarkVerify(b *testing.B) {
	r, total := openBench(b)
	b.SetBytes(total)
	b.ResetTimer()
	for b.Loop() {
		if err := r.Verify(ExtractOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestPerf(t *testing.T) {
	in := os.Getenv("ARCHIVE_PERF_DIR")
	if in == "" {
		t.Skip("set ARCHIVE_PERF_DIR to an images directory to measure performance")
	}
	if s := os.Getenv("ARCHIVE_PERF_GEN"); s != "" {
		if _, err := os.Stat(in); err != nil {
			mb, _ := strconv.ParseInt(s, 10, 64)
			genImages(t, in, mb<<20)
		}
	}
	outDir := envOr("ARCHIVE_PERF_OUT", t.TempDir())
	extractBase := envOr("ARCHIVE_PERF_EXTRACT", "/dev/shm")
	runs, _ := strconv.Atoi(envOr("ARCHIVE_PERF_RUNS", "3"))
	path := filepath.Join(outDir, "perf.zip")
	os.Remove(path)
	defer os.Remove(path)
	measure := func(what string, f func() error) {
		start, cpu := time.Now(), cpuTime()
		if err := f(); err != nil {
			t.Fatal(err)
		}
		t.Logf("%-8s wall %6.3fs  cpu %6.3fs", what, time.Since(start).Seconds(), (cpuTime() - cpu).Seconds())
	}
	for range runs {
		os.Remove(path)
		measure("create", func() error {
			_, size, err := Create(path, testManifest(), in, nil, WriteOptions{})
			t.Logf("archive size %d bytes", size)
			return err
		})
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
		measure("extract", func() error { return r.Extract(dir, ExtractOptions{}) })
		os.RemoveAll(dir)
	}
	for range runs {
		measure("verify", func() error { return r.Verify(ExtractOptions{}) })
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

// smallBenchImages is a checkpoint of an idle process: 15 small CRIU
// images, about 80 KiB in all.
func smallBenchImages() map[string][]byte {
	return map[string][]byte{
		"core-1.img":      randomBytes(8, 3000),
		"pages-1.img":     append(textBytes(24<<10), randomBytes(12, 16<<10)...),
		"pagemap-1.img":   textBytes(600),
		"mm-1.img":        textBytes(4096),
		"files.img":       textBytes(20000),
		"fdinfo-2.img":    randomBytes(9, 300),
		"inventory.img":   []byte("inventory"),
		"pstree.img":      []byte{1, 2, 3},
		"ids-1.img":       randomBytes(10, 40),
		"fs-1.img":        textBytes(30),
		"tty-info.img":    nil,
		"seccomp.img":     nil,
		"timens-0.img":    randomBytes(11, 20),
		"utsns-12.img":    textBytes(64),
		"ipcns-var-1.img": textBytes(12000),
	}
}

// BenchmarkSmallArchive creates, opens and extracts the archive of a
// small checkpoint, as a daemon does for idle jobs.
func BenchmarkSmallArchive(b *testing.B) {
	in := filepath.Join(scratchDir(b), "images")
	os.Mkdir(in, 0o700)
	var total int64
	for name, data := range smallBenchImages() {
		os.WriteFile(filepath.Join(in, name), data, 0o600)
		total += int64(len(data))
	}
	out := scratchDir(b)
	b.SetBytes(total)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		path := filepath.Join(out, strconv.Itoa(i)+".zip")
		if _, _, err := Create(path, testManifest(), in, nil, WriteOptions{}); err != nil {
			b.Fatal(err)
		}
		r, err := Open(path, Limits{})
		if err != nil {
			b.Fatal(err)
		}
		dir := filepath.Join(out, strconv.Itoa(i))
		os.Mkdir(dir, 0o700)
		if err := r.Extract(dir, ExtractOptions{}); err != nil {
			b.Fatal(err)
		}
		r.Close()
		b.StopTimer()
		os.RemoveAll(dir)
		os.Remove(path)
		b.StartTimer()
	}
}
