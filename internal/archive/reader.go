package archive

import (
	"archive/zip"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/klauspost/compress/zstd"
)

// Limits bounds what Open accepts, so that a hostile or damaged archive
// cannot make a reader allocate or write without bound. A zero field
// means the DefaultLimits value.
type Limits struct {
	// MaxEntries is the largest number of entries besides the manifest.
	MaxEntries int
	// MaxTotalSize is the largest total uncompressed size of the entries.
	MaxTotalSize int64
	// MaxManifestSize is the largest uncompressed size of manifest.json.
	MaxManifestSize int64
}

// DefaultLimits returns the limits used for archives from the local
// machine: 100000 entries, 1 TiB of content, a 64 MiB manifest.
func DefaultLimits() Limits {
	return Limits{MaxEntries: 100_000, MaxTotalSize: 1 << 40, MaxManifestSize: 64 << 20}
}

// orDefault replaces zero fields with defaults.
func (l Limits) orDefault() Limits {
	d := DefaultLimits()
	if l.MaxEntries <= 0 {
		l.MaxEntries = d.MaxEntries
	}
	if l.MaxTotalSize <= 0 {
		l.MaxTotalSize = d.MaxTotalSize
	}
	if l.MaxManifestSize <= 0 {
		l.MaxManifestSize = d.MaxManifestSize
	}
	return l
}

// Reader is an open, structurally validated checkpoint archive.
// Its methods may be called concurrently.
type Reader struct {
	// Manifest is the archive's validated manifest. Callers must not
	// modify it.
	Manifest *Manifest
	// Size is the size of the archive file in bytes.
	Size int64

	path    string
	src     io.ReaderAt       // the archive's bytes
	f       *os.File          // src, when the archive is a local file (mmap, splice); else nil
	closer  io.Closer         // closes src; nil: nothing to close
	entries map[string]*entry // by name, manifest excluded
	ahead   verifications     // digests checked ahead of StreamEntry
}

// entry locates one validated zip entry.
type entry struct {
	info       EntryInfo
	method     uint16
	dataOffset int64
	compSize   int64
}

// Open opens the archive at path, reads and validates its manifest, and
// checks its structure without reading any content: the zip holds exactly
// manifest.json and the manifest's entries, once each; every entry is an
// unencrypted regular file with a safe name, a known compression method
// (store, deflate or zstd), the uncompressed size the manifest records,
// and data that lies inside the file without overlapping another entry.
//
// Errors wrap ErrNotArchive, ErrCorrupt, ErrUnsupportedVersion,
// ErrTooLarge or ErrUnsafeEntry, except for failures to open the file.
func Open(path string, lim Limits) (*Reader, error) {
	lim = lim.orDefault()
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	r, err := open(f, lim)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open checkpoint archive %s: %w", path, err)
	}
	r.path = path
	return r, nil
}

// Close closes the archive file.
// It stops the digest checks VerifyAhead started and waits for them.
func (r *Reader) Close() error {
	r.ahead.stop()
	if r.closer == nil {
		return nil
	}
	return r.closer.Close()
}

// OpenReaderAt opens an archive of size bytes read through src — an
// object in a remote store, say — with the same checks as Open. name
// describes it in messages. The Reader reads src only through ReadAt; its
// Close closes src when src is an io.Closer. When src is an *os.File,
// reads take the file's fast paths (mmap, splice) as Open's do.
func OpenReaderAt(name string, src io.ReaderAt, size int64, lim Limits) (*Reader, error) {
	if size <= 0 {
		return nil, fmt.Errorf("open checkpoint archive %s: %w: it is empty", name, ErrNotArchive)
	}
	f, _ := src.(*os.File)
	r, err := openAt(src, f, size, lim.orDefault())
	if err != nil {
		return nil, fmt.Errorf("open checkpoint archive %s: %w", name, err)
	}
	r.path = name
	r.closer, _ = src.(io.Closer)
	return r, nil
}

func open(f *os.File, lim Limits) (*Reader, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: not a regular file", ErrNotArchive)
	}
	size := fi.Size()
	if size == 0 {
		return nil, fmt.Errorf("%w: the file is empty", ErrNotArchive)
	}
	r, err := openAt(f, f, size, lim)
	if err != nil {
		return nil, err
	}
	r.closer = f
	return r, nil
}

// openAt opens the archive of size bytes in src; f is src when it is a
// local file, else nil.
func openAt(src io.ReaderAt, f *os.File, size int64, lim Limits) (*Reader, error) {
	zr, err := zip.NewReader(src, size)
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) { // names are checked below
		return nil, classifyZipError(src, err)
	}
	zr.RegisterDecompressor(methodZstd, zstd.ZipDecompressor(zstd.WithDecoderMaxWindow(maxDecoderWindow)))

	var manifest *zip.File
	for _, zf := range zr.File {
		if zf.Name == ManifestName {
			if manifest != nil {
				return nil, entryErr(ManifestName, ErrUnsafeEntry, "appears twice")
			}
			manifest = zf
		}
	}
	if manifest == nil {
		return nil, fmt.Errorf("%w: the zip has no %s", ErrNotArchive, ManifestName)
	}
	if len(zr.File)-1 > lim.MaxEntries {
		return nil, fmt.Errorf("%w: %d entries, the limit is %d", ErrTooLarge, len(zr.File)-1, lim.MaxEntries)
	}
	for _, zf := range zr.File {
		if err := checkZipEntry(zf); err != nil {
			return nil, err
		}
	}
	m, err := readManifest(manifest, lim)
	if err != nil {
		return nil, err
	}
	entries, err := matchEntries(zr, m, lim)
	if err != nil {
		return nil, err
	}
	if err := checkLayout(entries, manifest, size); err != nil {
		return nil, err
	}
	return &Reader{Manifest: m, Size: size, src: src, f: f, entries: entries}, nil
}

// classifyZipError explains why archive/zip refused the file: a file that
// starts like a zip but has no readable directory is corrupt (typically
// truncated); anything else is not an archive.
func classifyZipError(f io.ReaderAt, err error) error {
	var magic [4]byte
	if _, rerr := f.ReadAt(magic[:], 0); rerr == nil && bytes.Equal(magic[:], []byte("PK\x03\x04")) {
		return fmt.Errorf("%w: the zip directory is missing or damaged (truncated file?): %w", ErrCorrupt, err)
	}
	return fmt.Errorf("%w: not a zip file: %w", ErrNotArchive, err)
}

// checkZipEntry checks one zip entry's name, type, encryption and method.
func checkZipEntry(zf *zip.File) error {
	if zf.Name != ManifestName {
		if err := checkEntryName(zf.Name); err != nil {
			return &EntryError{Entry: zf.Name, Err: err}
		}
	}
	if mode := zf.Mode(); !mode.IsRegular() {
		return entryErr(zf.Name, ErrUnsafeEntry, "is a %s, not a regular file", fileType(mode))
	}
	if zf.Flags&0x1 != 0 {
		return entryErr(zf.Name, ErrCorrupt, "is encrypted")
	}
	switch zf.Method {
	case methodStore, methodDeflate, methodZstd:
	default:
		return entryErr(zf.Name, ErrCorrupt, "uses unsupported compression method %d", zf.Method)
	}
	if zf.Method == methodStore && zf.CompressedSize64 != zf.UncompressedSize64 {
		return entryErr(zf.Name, ErrCorrupt, "is stored uncompressed but its sizes differ (%d, %d)", zf.CompressedSize64, zf.UncompressedSize64)
	}
	return nil
}

// readManifest reads, decodes and validates the manifest entry.
func readManifest(zf *zip.File, lim Limits) (*Manifest, error) {
	if zf.UncompressedSize64 > uint64(lim.MaxManifestSize) {
		return nil, fmt.Errorf("%w: %s is %d bytes, the limit is %d", ErrTooLarge, ManifestName, zf.UncompressedSize64, lim.MaxManifestSize)
	}
	rc, err := zf.Open()
	if err != nil {
		return nil, entryErr(ManifestName, ErrCorrupt, "%w", err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, lim.MaxManifestSize+1))
	if err == nil && int64(len(data)) > lim.MaxManifestSize {
		err = errors.New("longer than declared")
	}
	if err != nil {
		return nil, entryErr(ManifestName, ErrCorrupt, "%w", err)
	}
	return ParseManifest(data)
}

// matchEntries checks that the zip's entries are exactly the manifest's,
// with the recorded sizes, within the limits.
func matchEntries(zr *zip.Reader, m *Manifest, lim Limits) (map[string]*entry, error) {
	if len(m.Entries) > lim.MaxEntries {
		return nil, fmt.Errorf("%w: the manifest lists %d entries, the limit is %d", ErrTooLarge, len(m.Entries), lim.MaxEntries)
	}
	var total int64
	for _, e := range m.Entries {
		if total += e.Size; total > lim.MaxTotalSize || total < 0 {
			return nil, fmt.Errorf("%w: the entries hold more than %d bytes", ErrTooLarge, lim.MaxTotalSize)
		}
	}
	entries := make(map[string]*entry, len(m.Entries))
	for _, e := range m.Entries {
		entries[e.Name] = &entry{info: e, dataOffset: -1}
	}
	for _, zf := range zr.File {
		if zf.Name == ManifestName {
			continue
		}
		e, ok := entries[zf.Name]
		if !ok {
			return nil, entryErr(zf.Name, ErrUnsafeEntry, "is not listed in the manifest")
		}
		if e.dataOffset != -1 {
			return nil, entryErr(zf.Name, ErrUnsafeEntry, "appears twice in the zip")
		}
		if zf.UncompressedSize64 != uint64(e.info.Size) {
			return nil, entryErr(zf.Name, ErrCorrupt, "the zip says %d bytes, the manifest %d", zf.UncompressedSize64, e.info.Size)
		}
		off, err := zf.DataOffset()
		if err != nil {
			return nil, entryErr(zf.Name, ErrCorrupt, "bad local header: %w", err)
		}
		e.method, e.dataOffset, e.compSize = zf.Method, off, int64(zf.CompressedSize64)
	}
	for _, e := range m.Entries {
		if entries[e.Name].dataOffset == -1 {
			return nil, entryErr(e.Name, ErrCorrupt, "is listed in the manifest but missing from the zip")
		}
	}
	return entries, nil
}

// checkLayout checks that every entry's data lies inside the file and that
// no two entries share bytes (overlapping entries are a zip-bomb trick).
func checkLayout(entries map[string]*entry, manifest *zip.File, size int64) error {
	type span struct {
		name     string
		off, end int64
	}
	off, err := manifest.DataOffset()
	if err != nil {
		return entryErr(ManifestName, ErrCorrupt, "bad local header: %w", err)
	}
	spans := []span{{ManifestName, off, off + int64(manifest.CompressedSize64)}}
	for name, e := range entries {
		spans = append(spans, span{name, e.dataOffset, e.dataOffset + e.compSize})
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.off, b.off) })
	for i, s := range spans {
		if s.off < 0 || s.end < s.off || s.end > size {
			return entryErr(s.name, ErrCorrupt, "data at %d..%d is outside the %d-byte file (truncated?)", s.off, s.end, size)
		}
		if i > 0 && spans[i-1].end > s.off {
			return entryErr(s.name, ErrCorrupt, "overlaps entry %q", spans[i-1].name)
		}
	}
	return nil
}
