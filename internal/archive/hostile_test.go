package archive

import (
	"bytes"
	"compress/flate"
	"errors"
	"io/fs"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// zstdOf compresses data as one zstd stream.
func zstdOf(t testing.TB, data []byte) []byte {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(data, nil)
}

// streamOf compresses data as a zstd stream without content sizes.
func streamOf(t testing.TB, data []byte) []byte {
	var b bytes.Buffer
	enc, err := zstd.NewWriter(&b, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	enc.Write(data)
	enc.Close()
	return b.Bytes()
}

// framesOf compresses data the way Create does (frameSize frames).
func framesOf(t testing.TB, data []byte) []byte {
	enc, err := newEncoder(1)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	var out []byte
	for len(data) > 0 {
		n := min(len(data), frameSize)
		out = enc.EncodeAll(data[:n], out)
		data = data[n:]
	}
	return out
}

// deflateOf compresses data with deflate.
func deflateOf(t testing.TB, data []byte) []byte {
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, 1)
	w.Write(data)
	w.Close()
	return b.Bytes()
}

func TestHostileArchives(t *testing.T) {
	ok := zipEntry{name: "images/core-1.img", data: []byte("core")}
	zeros := make([]byte, 10<<20)
	tests := []struct {
		name string
		zip  hostileZip
		lim  Limits
		want error
		msg  string // part of the error message
	}{
		{name: "valid", zip: hostileZip{entries: []zipEntry{ok}}},
		{name: "valid stored and deflated", zip: hostileZip{entries: []zipEntry{
			{name: "images/a.img", raw: []byte("stored"), rawSize: 6, data: []byte("stored")},
			{name: "images/b.img", method: methodDeflate, data: textBytes(5000)},
		}}},
		{name: "valid single big zstd frame", zip: hostileZip{entries: []zipEntry{
			{name: "images/pages-1.img", data: textBytes(5 << 20)},
		}}},
		{name: "parent escape", zip: hostileZip{entries: []zipEntry{ok, {name: "../evil", data: []byte("x")}}}, want: ErrUnsafeEntry, msg: "../evil"},
		{name: "absolute", zip: hostileZip{entries: []zipEntry{ok, {name: "/abs", data: []byte("x")}}}, want: ErrUnsafeEntry},
		{name: "escape below images", zip: hostileZip{entries: []zipEntry{{name: "images/../../x", data: []byte("x")}}}, want: ErrUnsafeEntry},
		{name: "nested image", zip: hostileZip{entries: []zipEntry{{name: "images/a/b", data: []byte("x")}}}, want: ErrUnsafeEntry},
		{name: "images dir", zip: hostileZip{entries: []zipEntry{ok, {name: "images/", data: nil}}}, want: ErrUnsafeEntry},
		{name: "dot image", zip: hostileZip{entries: []zipEntry{{name: "images/..", data: []byte("x")}}}, want: ErrUnsafeEntry},
		{name: "backslash", zip: hostileZip{entries: []zipEntry{{name: `images/..\..\x`, data: []byte("x")}}}, want: ErrUnsafeEntry},
		{name: "bad file index", zip: hostileZip{entries: []zipEntry{{name: "files/01", data: []byte("x")}}}, want: ErrUnsafeEntry},
		{name: "symlink entry", zip: hostileZip{entries: []zipEntry{{name: "images/link.img", data: []byte("/etc/passwd"), mode: fs.ModeSymlink | 0o777}}}, want: ErrUnsafeEntry, msg: "symlink"},
		{name: "directory entry", zip: hostileZip{entries: []zipEntry{{name: "images/dir.img", mode: fs.ModeDir | 0o700}}}, want: ErrUnsafeEntry, msg: "directory"},
		{name: "device entry", zip: hostileZip{entries: []zipEntry{{name: "images/null.img", mode: fs.ModeDevice | fs.ModeCharDevice | 0o600}}}, want: ErrUnsafeEntry, msg: "device"},
		{name: "duplicate entry", zip: hostileZip{entries: []zipEntry{ok, ok}}, want: ErrUnsafeEntry, msg: "twice"},
		{name: "duplicate manifest", zip: hostileZip{entries: []zipEntry{ok, {name: ManifestName, data: []byte("{}"), method: methodDeflate}}}, want: ErrUnsafeEntry},
		{name: "extra entry", zip: hostileZip{entries: []zipEntry{ok, {name: "images/extra.img", data: []byte("x")}},
			editManifest: func(m *Manifest) { m.Entries = m.Entries[:1] }}, want: ErrUnsafeEntry, msg: "not listed"},
		{name: "missing entry", zip: hostileZip{entries: []zipEntry{ok},
			editManifest: func(m *Manifest) {
				m.Entries = append(m.Entries, EntryInfo{Name: "images/gone.img", SHA256: strings.Repeat("0", 64)})
			}}, want: ErrCorrupt, msg: "missing"},
		{name: "size mismatch", zip: hostileZip{entries: []zipEntry{ok}, editManifest: func(m *Manifest) { m.Entries[0].Size++ }}, want: ErrCorrupt},
		{name: "digest mismatch", zip: hostileZip{entries: []zipEntry{ok}, editManifest: func(m *Manifest) { m.Entries[0].StoredXXH3 = strings.Repeat("a", 32) }}, want: ErrCorrupt, msg: "XXH3"},
		{name: "zstd bomb", zip: hostileZip{entries: []zipEntry{{name: "images/bomb.img", raw: zstdOf(t, zeros), rawSize: 100, method: methodZstd}}}, want: ErrCorrupt, msg: "more than"},
		{name: "framed zstd bomb", zip: hostileZip{entries: []zipEntry{{name: "images/bomb.img", raw: framesOf(t, zeros), rawSize: 5 << 20, method: methodZstd}}}, want: ErrCorrupt, msg: "more than"},
		{name: "small framed zstd bomb", zip: hostileZip{entries: []zipEntry{{name: "images/bomb.img", raw: framesOf(t, zeros), rawSize: 1 << 20, method: methodZstd}}}, want: ErrCorrupt, msg: "more than"},
		{name: "valid frames then a stream", zip: hostileZip{entries: []zipEntry{{name: "images/mixed.img", method: methodZstd,
			data: append(textBytes(9<<20), randomBytes(4, 3<<20)...),
			raw:  append(framesOf(t, textBytes(9<<20)), streamOf(t, randomBytes(4, 3<<20))...), rawSize: 12 << 20}}}},
		{name: "deflate bomb", zip: hostileZip{entries: []zipEntry{{name: "images/bomb.img", raw: deflateOf(t, zeros), rawSize: 100, method: methodDeflate}}}, want: ErrCorrupt, msg: "more than"},
		{name: "short stream", zip: hostileZip{entries: []zipEntry{{name: "images/short.img", raw: framesOf(t, zeros[:3<<20]), rawSize: 4 << 20, method: methodZstd}}}, want: ErrCorrupt, msg: "truncated"},
		{name: "short framed stream", zip: hostileZip{entries: []zipEntry{{name: "images/short.img", raw: framesOf(t, zeros[:9<<20]), rawSize: 10 << 20, method: methodZstd}}}, want: ErrCorrupt, msg: "truncated"},
		{name: "stored size mismatch", zip: hostileZip{entries: []zipEntry{{name: "images/a.img", raw: []byte("abc"), rawSize: 100}}}, want: ErrCorrupt},
		{name: "garbage zstd", zip: hostileZip{entries: []zipEntry{{name: "images/a.img", raw: []byte("\x28\xb5\x2f\xfdgarbage"), rawSize: 100, method: methodZstd}}}, want: ErrCorrupt},
		{name: "encrypted", zip: hostileZip{entries: []zipEntry{{name: "images/a.img", data: []byte("x"), flags: 0x1}}}, want: ErrCorrupt, msg: "encrypted"},
		{name: "unknown method", zip: hostileZip{entries: []zipEntry{{name: "images/a.img", raw: []byte("x"), rawSize: 1, method: 12}}}, want: ErrCorrupt, msg: "method"},
		{name: "future version", zip: hostileZip{entries: []zipEntry{ok}, editManifest: func(m *Manifest) { m.FormatVersion = 999 }}, want: ErrUnsupportedVersion, msg: "upgrade cedana"},
		{name: "version zero", zip: hostileZip{entries: []zipEntry{ok}, editManifest: func(m *Manifest) { m.FormatVersion = 0 }}, want: ErrUnsupportedVersion},
		{name: "relative carried path", zip: hostileZip{entries: []zipEntry{{name: "files/0", data: []byte("x")}},
			editManifest: func(m *Manifest) { m.CarriedFiles[0].Path = "etc/passwd" }}, want: ErrUnsafeEntry},
		{name: "dotdot carried path", zip: hostileZip{entries: []zipEntry{{name: "files/0", data: []byte("x")}},
			editManifest: func(m *Manifest) { m.CarriedFiles[0].Path = "/tmp/../etc/passwd" }}, want: ErrUnsafeEntry},
		{name: "carried file outside files/", zip: hostileZip{entries: []zipEntry{ok},
			editManifest: func(m *Manifest) {
				m.CarriedFiles = []CarriedFile{{Path: "/x", Entry: ok.name, Size: int64(len(ok.data))}}
			}}, want: ErrUnsafeEntry},
		{name: "manifest not json", zip: hostileZip{entries: []zipEntry{ok}, manifest: []byte("{not json")}, want: ErrCorrupt},
		{name: "manifest too large", zip: hostileZip{entries: []zipEntry{ok}}, lim: Limits{MaxManifestSize: 10}, want: ErrTooLarge},
		{name: "too many entries", zip: hostileZip{entries: []zipEntry{ok, {name: "images/b.img"}}}, lim: Limits{MaxEntries: 1}, want: ErrTooLarge},
		{name: "too much content", zip: hostileZip{entries: []zipEntry{ok}}, lim: Limits{MaxTotalSize: 2}, want: ErrTooLarge},
		{name: "no room to extract", zip: hostileZip{entries: []zipEntry{{name: "images/huge.img", raw: framesOf(t, []byte("x")), rawSize: 1 << 55, method: methodZstd}}},
			lim: Limits{MaxTotalSize: 1 << 60}, want: ErrTooLarge, msg: "available"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			parent, err := extractInto(t, tc.zip.write(t), tc.lim)
			wantErr(t, err, tc.want)
			if err != nil && !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not mention %q", err, tc.msg)
			}
			assertOnlyOut(t, parent)
		})
	}
}

func TestVersionErrorMessage(t *testing.T) {
	for v, want := range map[int][]string{
		999: {"999", "1", "upgrade cedana"},
		0:   {"0", "older"},
	} {
		m := testManifest()
		m.FormatVersion = v
		err := m.Validate()
		var ve *VersionError
		if !errors.As(err, &ve) || !errors.Is(err, ErrUnsupportedVersion) || ve.Version != v {
			t.Fatalf("version %d: %v", v, err)
		}
		for _, s := range want {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%q does not contain %q", err, s)
			}
		}
	}
}
