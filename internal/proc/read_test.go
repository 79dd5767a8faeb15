package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestReadFile: readFile returns what os.ReadFile does, for a file much
// larger than its first buffer and for an empty one, and a missing file
// is os.ErrNotExist.
func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	big := bytes.Repeat([]byte("0123456789abcdef"), 100_000/16+3)
	for name, data := range map[string][]byte{"big": big, "empty": nil, "small": []byte("x\n")} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readFile(p)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: %d bytes, %v; want %d bytes", name, len(got), err, len(data))
		}
	}
	// A /proc file whose size stat reports as 0.
	want, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc:", err)
	}
	got, err := readFile("/proc/self/status")
	if err != nil || !strings.HasPrefix(string(got), "Name:") || len(got) < len(want)/2 {
		t.Errorf("/proc/self/status: %q, %v", got, err)
	}
	if _, err := readFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want os.ErrNotExist", err)
	}
}

// TestReadDirNames: the names os.ReadDir gives, sorted, for a directory
// with more entries than one getdents call returns.
func TestReadDirNames(t *testing.T) {
	dir := t.TempDir()
	var want []string
	for i := range 600 { // long names: several getdents calls
		name := fmt.Sprintf("%s-%03d", strings.Repeat("n", 1+i%40), i)
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		want = append(want, name)
	}
	slices.Sort(want)
	got, err := readDirNames(dir)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("readDirNames: %d names, %v; want %d", len(got), err, len(want))
	}
	if _, err := readDirNames(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing dir: %v, want os.ErrNotExist", err)
	}
}

// TestTreeOfMissingProcess: Tree, which no longer reads the root's stat
// file, still says ErrNoProcess for a PID nobody holds and for nonsense.
func TestTreeOfMissingProcess(t *testing.T) {
	for _, pid := range []int{0, -1, 1 << 30} {
		if _, err := Tree(pid); !errors.Is(err, ErrNoProcess) {
			t.Errorf("Tree(%d): %v, want ErrNoProcess", pid, err)
		}
	}
	tree, err := Tree(os.Getpid())
	if err != nil || len(tree) == 0 || tree[0] != os.Getpid() {
		t.Fatalf("Tree(self) = %v, %v", tree, err)
	}
}
