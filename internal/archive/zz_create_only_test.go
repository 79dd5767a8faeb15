package archive

import (
	"os"
	"testing"
	"time"
)

func TestCreateOnly(t *testing.T) {
	in := os.Getenv("ARCHIVE_PERF_DIR")
	if in == "" || os.Getenv("CREATE_ONLY") == "" {
		t.Skip()
	}
	out := os.Getenv("CREATE_OUT")
	os.Remove(out)
	start, cpu := time.Now(), cpuTime()
	_, size, err := Create(out, testManifest(), in, nil, WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("RESULT create-%s wall %v cpu %v size %d", os.Getenv("ENC_LEVEL"), time.Since(start).Round(time.Millisecond), (cpuTime() - cpu).Round(time.Millisecond), size)
	r, err := Open(out, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dir, _ := os.MkdirTemp("/dev/shm", "x")
	defer os.RemoveAll(dir)
	start, cpu = time.Now(), cpuTime()
	if err := r.Extract(dir, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("RESULT extract-%s wall %v cpu %v size %d", os.Getenv("ENC_LEVEL"), time.Since(start).Round(time.Millisecond), (cpuTime() - cpu).Round(time.Millisecond), size)
	start, cpu = time.Now(), cpuTime()
	if err := r.Verify(ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("RESULT verify-%s wall %v cpu %v size %d", os.Getenv("ENC_LEVEL"), time.Since(start).Round(time.Millisecond), (cpuTime() - cpu).Round(time.Millisecond), size)
}
