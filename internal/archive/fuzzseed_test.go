package archive

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// fuzzTargets are the targets whose seed corpora TestFuzzSeeds writes.
var fuzzTargets = []string{"FuzzOpenExtract", "FuzzDecodeEntry", "FuzzDecodeFrames"}

// TestFuzzSeeds checks that every fuzz target has a committed seed
// corpus. With CEDANA_UPDATE_FUZZ_SEEDS=1 it first rewrites the corpora
// from archives and zstd streams made by this package's writer.
func TestFuzzSeeds(t *testing.T) {
	if os.Getenv("CEDANA_UPDATE_FUZZ_SEEDS") != "" {
		writeFuzzSeeds(t)
	}
	for _, target := range fuzzTargets {
		ents, err := os.ReadDir(filepath.Join("testdata", "fuzz", target))
		if err != nil || len(ents) == 0 {
			t.Errorf("%s has no seed corpus in testdata/fuzz (%v): run CEDANA_UPDATE_FUZZ_SEEDS=1 go test -run TestFuzzSeeds", target, err)
		}
	}
}

// writeSeed writes one corpus file in go test's format.
func writeSeed(t *testing.T, target, name string, args ...any) {
	t.Helper()
	var b strings.Builder
	b.WriteString("go test fuzz v1\n")
	for _, a := range args {
		switch v := a.(type) {
		case []byte:
			fmt.Fprintf(&b, "[]byte(%s)\n", strconv.Quote(string(v)))
		case uint32:
			fmt.Fprintf(&b, "uint32(%d)\n", v)
		case uint8:
			fmt.Fprintf(&b, "byte(%s)\n", strconv.QuoteRune(rune(v)))
		default:
			t.Fatalf("seed argument of type %T", a)
		}
	}
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "seed-"+name), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fuzzable rewrites a real archive so that mutations reach its manifest:
// the manifest stored uncompressed, and every CRC-32 zero (unchecked).
func fuzzable(t *testing.T, data []byte) []byte {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, zf := range zr.File {
		fh := zf.FileHeader
		fh.CRC32, fh.Flags = 0, 0
		var raw []byte
		if zf.Name == ManifestName {
			rc, err := zf.Open()
			if err != nil {
				t.Fatal(err)
			}
			raw, err = io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			fh.Method, fh.CompressedSize64 = methodStore, uint64(len(raw))
		} else {
			rc, err := zf.OpenRaw()
			if err != nil {
				t.Fatal(err)
			}
			raw, _ = io.ReadAll(rc)
		}
		w, err := zw.CreateRaw(&fh)
		if err == nil {
			_, err = w.Write(raw)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// storedEntries returns the stored bytes and sizes of an archive's
// entries (the manifest excluded).
func storedEntries(t *testing.T, data []byte) map[string]struct {
	raw  []byte
	size uint64
} {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]struct {
		raw  []byte
		size uint64
	}{}
	for _, zf := range zr.File {
		if zf.Name == ManifestName {
			continue
		}
		rc, err := zf.OpenRaw()
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(rc)
		out[zf.Name] = struct {
			raw  []byte
			size uint64
		}{raw, zf.UncompressedSize64}
	}
	return out
}

func writeFuzzSeeds(t *testing.T) {
	for _, target := range fuzzTargets {
		os.RemoveAll(filepath.Join("testdata", "fuzz", target))
	}
	// Real archives, as Create writes them.
	src := filepath.Join(t.TempDir(), "carried")
	if err := os.WriteFile(src, []byte("carried file"), 0o600); err != nil {
		t.Fatal(err)
	}
	archives := map[string][]byte{}
	for name, a := range map[string]struct {
		images map[string][]byte
		files  []FileSource
	}{
		"small":   {images: map[string][]byte{"core-1.img": []byte("core"), "pages-1.img": textBytes(3000), "empty.img": nil}},
		"carried": {images: map[string][]byte{"inventory.img": []byte("inventory")}, files: []FileSource{{Source: src, Meta: CarriedFile{Path: "/tmp/x"}}}},
		"none":    {},
	} {
		data, err := os.ReadFile(createArchive(t, a.images, a.files))
		if err != nil {
			t.Fatal(err)
		}
		archives[name] = data
		writeSeed(t, "FuzzOpenExtract", name, fuzzable(t, data))
	}
	writeSeed(t, "FuzzOpenExtract", "empty-zip", []byte("PK\x05\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))

	// Stored streams: the entries of those archives, and zstd streams
	// with what Cedana's writer never makes but a hostile one could.
	for _, name := range []string{"small"} {
		for ename, e := range storedEntries(t, archives[name]) {
			seed := name + "-" + strings.NewReplacer("/", "-", ".", "-").Replace(ename)
			writeSeed(t, "FuzzDecodeEntry", seed, e.raw, uint32(e.size), uint8(0))
			writeSeed(t, "FuzzDecodeFrames", seed, e.raw, uint32(e.size))
		}
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	encCRC, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(true))
	if err != nil {
		t.Fatal(err)
	}
	defer encCRC.Close()
	text := textBytes(40 << 10)
	var frames []byte // three frames with content sizes, as Cedana cuts them
	for i := range 3 {
		frames = enc.EncodeAll(text[i*8<<10:(i+1)*8<<10], frames)
	}
	raw := appendRawFrame(nil, randomBytes(4, 2<<10)) // as the writer stores incompressible memory
	skippable := append([]byte{0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 'a', 'b', 'c'}, frames...)
	var streamed bytes.Buffer // no content size in the header
	zw, _ := zstd.NewWriter(&streamed, zstd.WithEncoderConcurrency(1))
	zw.Write(text[:5000])
	zw.Close()
	big := enc.EncodeAll(textBytes(100<<10), nil) // more than FuzzDecodeFrames' 64 KiB
	for name, s := range map[string]struct {
		b    []byte
		size int
	}{
		"frames": {frames, 24 << 10}, "raw-frame": {raw, 2 << 10}, "skippable": {skippable, 24 << 10},
		"streamed": {streamed.Bytes(), 5000}, "checksum": {encCRC.EncodeAll(text[:3000], nil), 3000},
		"big-frame": {big, 100 << 10}, "mixed": {append(append([]byte{}, raw...), frames...), 26 << 10},
	} {
		writeSeed(t, "FuzzDecodeEntry", name, s.b, uint32(s.size), uint8(0))
		writeSeed(t, "FuzzDecodeFrames", name, s.b, uint32(s.size))
	}
	var fl bytes.Buffer
	fw, _ := flate.NewWriter(&fl, flate.DefaultCompression)
	fw.Write(text[:2000])
	fw.Close()
	writeSeed(t, "FuzzDecodeEntry", "deflate", fl.Bytes(), uint32(2000), uint8(1))
	writeSeed(t, "FuzzDecodeEntry", "store", text[:100], uint32(100), uint8(2))
}
