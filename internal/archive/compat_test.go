package archive

import (
	"bytes"
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
				e.SHA256, e.StoredSHA256, e.StoredXXH3 = hex.EncodeToString(sum[:]), "", ""
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

// TestReadsFormat2: archives of format 2 (stored SHA-256, no XXH3) still
// extract and stream, and their SHA-256 is what both check.
func TestReadsFormat2(t *testing.T) {
	data := append(textBytes(5<<20), randomBytes(9, 3<<20)...)
	entries := []zipEntry{{name: "images/pages-1.img", data: data, method: methodZstd}}
	v2 := func(damage bool) func(*Manifest) {
		return func(m *Manifest) {
			m.FormatVersion = 2
			for i := range m.Entries {
				m.Entries[i].StoredXXH3 = ""
				if damage {
					m.Entries[i].StoredSHA256 = strings.Repeat("0", 64)
				}
			}
		}
	}
	for _, damage := range []bool{false, true} {
		path := hostileZip{entries: entries, editManifest: v2(damage)}.write(t)
		_, err := extractInto(t, path, Limits{})
		r, oerr := Open(path, Limits{})
		if oerr != nil {
			t.Fatal(oerr)
		}
		var got bytes.Buffer
		serr := r.StreamEntry("images/pages-1.img", &got)
		r.Close()
		if damage {
			wantErr(t, err, ErrCorrupt)
			wantErr(t, serr, ErrCorrupt)
			if !strings.Contains(serr.Error(), "SHA-256") {
				t.Errorf("stream error %q does not name the SHA-256", serr)
			}
			continue
		}
		if err != nil || serr != nil {
			t.Fatalf("format 2 archive: extract %v, stream %v", err, serr)
		}
		if !bytes.Equal(got.Bytes(), data) {
			t.Fatal("format 2 archive streamed other content")
		}
	}
}

// TestVerifyChecksEveryDigest: a restore checks the XXH3-128 of the
// stored bytes, but Verify (inspect --verify) checks the SHA-256 as well.
func TestVerifyChecksEveryDigest(t *testing.T) {
	entries := []zipEntry{{name: "images/pages-1.img", data: textBytes(1 << 20), method: methodZstd}}
	path := hostileZip{entries: entries, editManifest: func(m *Manifest) {
		m.Entries[0].StoredSHA256 = strings.Repeat("0", 64)
	}}.write(t)
	r, err := Open(path, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	err = r.Verify(ExtractOptions{})
	wantErr(t, err, ErrCorrupt)
	if !strings.Contains(err.Error(), "SHA-256") {
		t.Errorf("error %q does not name the SHA-256", err)
	}
}
