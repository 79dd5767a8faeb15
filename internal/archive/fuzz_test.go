package archive

// Fuzz targets of the archive reader, which reads untrusted bytes.
//
// They run in memory: an archive is written to a memfd (an anonymous
// in-memory file: the Reader needs an *os.File for its mmap and splice
// paths) and read with open, never through a temporary directory.
// Extraction, the one step that needs a directory, goes to one directory
// per fuzzing worker, emptied between inputs. Zip CRC-32s would stop
// almost every mutation of the manifest, so the seeds of FuzzOpenExtract
// store it uncompressed with a zero CRC (which archive/zip does not
// check), and FuzzDecodeEntry builds the archive around the fuzzed stored
// bytes with their right digests, so that mutations reach the decoders.
// The seed corpora in testdata/fuzz/ come from real archives
// (CEDANA_UPDATE_FUZZ_SEEDS=1 go test -run TestFuzzSeeds rewrites them).

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// fuzzLimits keep each fuzz execution small.
var fuzzLimits = Limits{MaxEntries: 64, MaxTotalSize: 8 << 20, MaxManifestSize: 1 << 20}

// sentinels are the errors every content error of this package wraps
// exactly one of (see errors.go).
var sentinels = []error{ErrNotArchive, ErrCorrupt, ErrUnsupportedVersion, ErrTooLarge, ErrUnsafeEntry}

// checkTyped fails unless err wraps exactly one sentinel.
func checkTyped(t *testing.T, op string, err error) {
	t.Helper()
	n := 0
	for _, s := range sentinels {
		if errors.Is(err, s) {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%s: the error wraps %d of the package's sentinel errors, want 1: %v", op, n, err)
	}
}

// memFile returns an in-memory file holding data.
func memFile(t testing.TB, data []byte) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("cedana-fuzz", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:cedana-fuzz")
	if _, err := f.Write(data); err != nil {
		f.Close()
		t.Fatal(err)
	}
	return f
}

// openMem opens data as Open opens an archive file.
func openMem(t testing.TB, data []byte, lim Limits) (*Reader, error) {
	t.Helper()
	f := memFile(t, data)
	r, err := open(f, lim.orDefault())
	if err != nil {
		f.Close()
		return nil, err
	}
	return r, nil
}

// workerDir is an extraction directory for one fuzzing worker: made once
// per worker process (before f.Fuzz), emptied before each use.
type workerDir struct{ parent string }

// fresh returns an empty parent/out.
func (d workerDir) fresh(t *testing.T) string {
	t.Helper()
	out := filepath.Join(d.parent, "out")
	if err := os.RemoveAll(out); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkReader runs everything a restore would on an opened archive and
// checks that the paths agree: Verify, Extract (into dir, nothing
// written outside it), and StreamEntry of every streamable entry, into a
// buffer and into a pipe (splice, vmsplice), whose output must equal the
// extracted file. Verify checks every digest the
// manifest records, Extract and StreamEntry only the fastest (XXH3-128,
// see checksFor), so what Verify accepts they must accept, not the
// converse. It returns what StreamEntry wrote and Verify's error.
func checkReader(t *testing.T, r *Reader, dir workerDir) (map[string][]byte, error) {
	t.Helper()
	verr := r.Verify(ExtractOptions{Concurrency: 1})
	if verr != nil {
		checkTyped(t, "Verify", verr)
	}
	out := dir.fresh(t)
	xerr := r.Extract(out, ExtractOptions{Concurrency: 1})
	assertOnlyOut(t, dir.parent)
	if xerr != nil {
		checkTyped(t, "Extract", xerr)
	}
	if verr == nil && xerr != nil {
		t.Fatalf("Verify passed but Extract failed: %v", xerr)
	}
	streamed := map[string][]byte{}
	for name := range r.entries {
		if !r.Streamable(name) {
			continue
		}
		var buf bytes.Buffer
		serr := r.StreamEntry(name, &buf)
		if serr != nil {
			checkTyped(t, "StreamEntry", serr)
			if verr == nil {
				t.Fatalf("Verify passed but StreamEntry(%s) failed: %v", name, serr)
			}
			continue
		}
		if verr != nil {
			continue
		}
		// Into a pipe, raw blocks are spliced from the archive and large
		// frames vmspliced: the same bytes must come out.
		piped, perr := streamToPipe(t, r, name)
		if perr != nil || !bytes.Equal(piped, buf.Bytes()) {
			t.Fatalf("StreamEntry(%s) into a pipe: %d bytes, %v; into a buffer: %d bytes", name, len(piped), perr, buf.Len())
		}
		if int64(buf.Len()) != r.entries[name].info.Size {
			t.Fatalf("StreamEntry(%s) wrote %d bytes, the manifest says %d", name, buf.Len(), r.entries[name].info.Size)
		}
		got, err := os.ReadFile(filepath.Join(out, name))
		if err != nil || !bytes.Equal(got, buf.Bytes()) {
			t.Fatalf("StreamEntry(%s) and Extract differ (%v)", name, err)
		}
		streamed[name] = buf.Bytes()
	}
	return streamed, verr
}

// streamToPipe runs StreamEntry into a pipe and returns what came out.
func streamToPipe(t *testing.T, r *Reader, name string) ([]byte, error) {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	var got []byte
	done := make(chan struct{})
	go func() {
		defer close(done)
		got, _ = io.ReadAll(pr)
	}()
	err = r.StreamEntry(name, pw)
	pw.Close()
	<-done
	return got, err
}

// FuzzParseManifest: any bytes parse to a valid manifest or to an error
// wrapping one sentinel; what parses survives a JSON round trip.
func FuzzParseManifest(f *testing.F) {
	m := testManifest()
	m.FormatVersion = FormatVersion
	m.Entries = []EntryInfo{{Name: "files/0", Size: 1, StoredSHA256: "0000000000000000000000000000000000000000000000000000000000000000", StoredXXH3: "00000000000000000000000000000000"}}
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
		if err != nil {
			checkTyped(t, "ParseManifest", err)
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("ParseManifest accepted an invalid manifest: %v", err)
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("marshal a parsed manifest: %v", err)
		}
		m2, err := ParseManifest(again)
		if err != nil {
			t.Fatalf("a parsed manifest does not parse again: %v\n%s", err, again)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("manifest changed in a JSON round trip:\n%+v\n%+v", m, m2)
		}
	})
}

// FuzzOpenExtract: any bytes either fail to open with a typed error, or
// open to an archive whose Verify, Extract and StreamEntry agree, and
// whose extraction writes only inside its directory.
func FuzzOpenExtract(f *testing.F) {
	f.Add([]byte("PK\x05\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	dir := workerDir{f.TempDir()}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := openMem(t, data, fuzzLimits)
		if err != nil {
			checkTyped(t, "Open", err)
			return
		}
		defer r.Close()
		if err := r.Manifest.Validate(); err != nil {
			t.Fatalf("Open accepted an invalid manifest: %v", err)
		}
		_, _ = checkReader(t, r, dir)
	})
}

// entryArchive returns an archive of one entry, images/pages-1.img,
// whose stored bytes are stored, compressed with method and declaring
// size bytes of content, with a manifest that records their right
// digests.
func entryArchive(t testing.TB, stored []byte, size int64, method uint16) []byte {
	t.Helper()
	const name = ImagesPrefix + "pages-1.img"
	m := testManifest()
	m.FormatVersion = FormatVersion
	sum := sha256.Sum256(stored)
	xx := xxh3.Hash128(stored).Bytes()
	m.Entries = []EntryInfo{{Name: name, Size: size, StoredSHA256: hex.EncodeToString(sum[:]), StoredXXH3: hex.EncodeToString(xx[:])}}
	mdata, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range []struct {
		name   string
		method uint16
		data   []byte
		size   int64
	}{{name, method, stored, size}, {ManifestName, methodStore, mdata, int64(len(mdata))}} {
		fh := &zip.FileHeader{Name: e.name, Method: e.method, CompressedSize64: uint64(len(e.data)), UncompressedSize64: uint64(e.size)}
		fh.SetMode(0o600)
		w, err := zw.CreateRaw(fh) // CRC-32 0: not checked
		if err == nil {
			_, err = w.Write(e.data)
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

// methods are the compression methods FuzzDecodeEntry picks from.
var methods = [...]uint16{methodZstd, methodDeflate, methodStore}

// refDecoder decodes a whole zstd stream, the reference the archive's
// frame-by-frame paths are compared with.
var refDecoder = sync.OnceValue(func() *zstd.Decoder {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxDecoderWindow))
	if err != nil {
		panic(err)
	}
	return d
})

// refDecode decodes stored as one zstd stream, failing beyond limit bytes.
func refDecode(stored []byte, limit int64) ([]byte, error) {
	d := refDecoder()
	if err := d.Reset(bytes.NewReader(stored)); err != nil {
		return nil, err
	}
	defer d.Reset(nil)
	out, err := io.ReadAll(io.LimitReader(d, limit+1))
	if err == nil && int64(len(out)) > limit {
		err = errors.New("longer than the limit")
	}
	return out, err
}

// FuzzDecodeEntry: an entry of any stored bytes, with the right digests,
// decodes to the same content through Verify, Extract and StreamEntry
// (which splits zstd frames itself and splices raw blocks), and that
// content is what a plain zstd decoder makes of the bytes.
func FuzzDecodeEntry(f *testing.F) {
	dir := workerDir{f.TempDir()}
	f.Fuzz(func(t *testing.T, stored []byte, size uint32, method uint8) {
		size %= 1 << 20
		m := methods[int(method)%len(methods)]
		if m == methodStore {
			size = uint32(len(stored)) // checked by Open already
		}
		r, err := openMem(t, entryArchive(t, stored, int64(size), m), fuzzLimits)
		if err != nil {
			t.Fatalf("an archive built right does not open: %v", err)
		}
		defer r.Close()
		streamed, verr := checkReader(t, r, dir)
		if m != methodZstd {
			return
		}
		want, rerr := refDecode(stored, int64(size))
		if rerr == nil && len(want) != int(size) {
			rerr = errors.New("short")
		}
		switch {
		case rerr == nil && verr != nil:
			t.Fatalf("a zstd decoder reads the %d bytes but Verify fails: %v", size, verr)
		case rerr != nil && verr == nil:
			t.Fatalf("Verify passes but a zstd decoder fails: %v", rerr)
		case verr == nil && !bytes.Equal(streamed[ImagesPrefix+"pages-1.img"], want):
			t.Fatal("StreamEntry differs from a zstd decoder")
		}
	})
}

// FuzzDecodeFrames: the frame walker (parseFrameHeader, frameSplitter)
// and the parallel frame decoder agree with klauspost/compress's own
// header decoding and with a plain zstd decoder. A pipeline of 64 KiB
// buffers makes frames of more than 64 KiB take the fallback.
func FuzzDecodeFrames(f *testing.F) {
	f.Fuzz(func(t *testing.T, stored []byte, limit uint32) {
		limit %= 1 << 20
		checkFrameHeader(t, stored)

		pipe := newPipeline(64<<10, 6)
		dec := &decoders{}
		defer dec.close()
		var got []byte
		err := pipe.run(context.Background(), func(fl *flow) error {
			return decodeFrames(fl, io.NewSectionReader(bytes.NewReader(stored), 0, int64(len(stored))), dec, 2, int64(limit))
		}, func(b []byte) error { got = append(got, b...); return nil })
		want, rerr := refDecode(stored, int64(limit))
		switch {
		case rerr == nil && err != nil:
			t.Fatalf("a zstd decoder reads %d bytes but decodeFrames fails: %v", len(want), err)
		case rerr != nil && err == nil:
			t.Fatalf("decodeFrames passes (%d bytes) but a zstd decoder fails: %v", len(got), rerr)
		case err == nil && !bytes.Equal(got, want):
			t.Fatalf("decodeFrames made %d bytes, a zstd decoder %d, not the same", len(got), len(want))
		}
	})
}

// checkFrameHeader compares parseFrameHeader with zstd.Header.Decode.
func checkFrameHeader(t *testing.T, b []byte) {
	t.Helper()
	h, err := parseFrameHeader(b[:min(len(b), maxFrameHeaderLen)])
	if err != nil {
		return
	}
	var zh zstd.Header
	if zerr := zh.Decode(b); zerr != nil || zh.Skippable {
		t.Fatalf("parseFrameHeader accepts a header zstd refuses (%v, skippable %v)", zerr, zh.Skippable)
	}
	want := int64(-1)
	if zh.HasFCS && zh.FrameContentSize <= 1<<62 {
		want = int64(zh.FrameContentSize)
	}
	if h.headerLen != zh.HeaderSize || h.contentSize != want || h.checksum != zh.HasCheckSum {
		t.Fatalf("parseFrameHeader = %+v; zstd says header %d bytes, content %d (has %v), checksum %v",
			h, zh.HeaderSize, zh.FrameContentSize, zh.HasFCS, zh.HasCheckSum)
	}
}
