package archive

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// fuzzLimits keep each fuzz execution small.
var fuzzLimits = Limits{MaxEntries: 64, MaxTotalSize: 8 << 20, MaxManifestSize: 1 << 20}

func FuzzParseManifest(f *testing.F) {
	m := testManifest()
	m.FormatVersion = FormatVersion
	m.Entries = []EntryInfo{{Name: "files/0", Size: 1, SHA256: "0000000000000000000000000000000000000000000000000000000000000000"}}
	m.CarriedFiles = []CarriedFile{{Path: "/a", Entry: "files/0", Size: 1}}
	valid, err := json.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add([]byte(`{"format_version": 999}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err == nil {
			if err := m.Validate(); err != nil {
				t.Fatalf("ParseManifest accepted an invalid manifest: %v", err)
			}
		}
	})
}

func FuzzOpenExtract(f *testing.F) {
	for _, images := range []map[string][]byte{
		{"core-1.img": []byte("core"), "pages-1.img": textBytes(3000)},
		nil,
	} {
		data, err := os.ReadFile(createArchive(f, images, nil))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	src := filepath.Join(f.TempDir(), "src")
	os.WriteFile(src, []byte("carried"), 0o600)
	data, err := os.ReadFile(createArchive(f, map[string][]byte{"a.img": {1}}, []FileSource{{Source: src, Meta: CarriedFile{Path: "/tmp/x"}}}))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte("PK\x05\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))

	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "a.zip")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		// One worker keeps executions deterministic, which the fuzzer's
		// coverage guidance needs.
		parent, err := extractIntoOpts(t, path, fuzzLimits, ExtractOptions{Concurrency: 1})
		if err == nil {
			// Whatever extracts must also verify.
			r, err := Open(path, fuzzLimits)
			if err != nil {
				t.Fatalf("second Open failed: %v", err)
			}
			if err := r.Verify(ExtractOptions{Concurrency: 1}); err != nil {
				t.Fatalf("Extract succeeded but Verify failed: %v", err)
			}
			r.Close()
		}
		assertOnlyOut(t, parent)
	})
}
