package archive

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadsFormat1: archives of format 1 (SHA-256 of the content, no
// stored digest) still extract, and their digests are still checked.
func TestReadsFormat1(t *testing.T) {
	content := map[string][]byte{
		"images/pages-1.img": append(textBytes(5<<20), randomBytes(7, 1<<20)...),
		"images/core-1.img":  randomBytes(8, 3000),
	}
	v1 := func(damage bool) func(*Manifest) {
		return func(m *Manifest) {
			m.FormatVersion = 1
			for i := range m.Entries {
				e := &m.Entries[i]
				sum := sha256.Sum256(content[e.Name])
				e.SHA256, e.StoredSHA256 = hex.EncodeToString(sum[:]), ""
				if damage && strings.HasSuffix(e.Name, "pages-1.img") {
					e.SHA256 = strings.Repeat("0", 64)
				}
			}
		}
	}
	var entries []zipEntry
	for name, data := range content {
		entries = append(entries, zipEntry{name: name, data: data})
	}

	path := hostileZip{entries: entries, editManifest: v1(false)}.write(t)
	parent, err := extractInto(t, path, Limits{})
	if err != nil {
		t.Fatalf("format 1 archive: %v", err)
	}
	for name, want := range content {
		got, err := os.ReadFile(filepath.Join(parent, "out", name))
		if err != nil || string(got) != string(want) {
			t.Fatalf("%s: extracted content differs (%v)", name, err)
		}
	}
	r, err := Open(path, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Streamable("images/pages-1.img") {
		t.Error("a format 1 entry (no stored digest) claims to be streamable")
	}
	r.Close()

	path = hostileZip{entries: entries, editManifest: v1(true)}.write(t)
	_, err = extractInto(t, path, Limits{})
	wantErr(t, err, ErrCorrupt)
}
