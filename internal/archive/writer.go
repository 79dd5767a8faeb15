package archive

import (
	"archive/zip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// FileSource is a carried file to store in an archive.
type FileSource struct {
	// Source is the path to read the content from now (e.g. a copy made
	// while the process was frozen, or the file itself).
	Source string
	// Meta describes the file. Create sets Meta.Entry ("files/0",
	// "files/1", ... in the order of the slice) and Meta.Size (the number
	// of bytes stored); the caller fills the other fields.
	Meta CarriedFile
}

// WriteOptions tunes Create.
type WriteOptions struct {
	// Progress, if set, is called from time to time with the number of
	// uncompressed bytes consumed so far. Calls are serialized and their
	// values increase; it may be called from any goroutine.
	Progress func(written int64)
	// Concurrency is the number of goroutines compressing a large entry;
	// 0 means runtime.NumCPU().
	Concurrency int
	// Extra are container files (configuration, rootfs changes), stored as
	// entries under container/ with the same integrity records.
	Extra []ExtraFile
}

// ExtraFile is a container file to store in the archive.
type ExtraFile struct {
	// Name is the entry name: ContainerPrefix + one path element.
	Name string
	// Source is the path to read the content from now.
	Source string
}

// Create writes a checkpoint archive at path, atomically.
//
// It writes into a temporary file in the same directory, named
// ".<base>.partial-<random>" with mode 0600; streams every regular file of
// imagesDir (which must be flat: subdirectories, symlinks and other
// non-regular files are refused) as images/<name>, then each FileSource as
// files/<i>, computing the size and SHA-256 of the uncompressed bytes in
// the same pass; fills m.Entries (sorted by name) and m.CarriedFiles; and
// writes manifest.json last. It then fsyncs the file, links it to path and
// fsyncs the directory. It never replaces an existing file: if path exists
// the error wraps fs.ErrExist.
//
// m must pass Validate once its entries are filled in; m.FormatVersion is
// set to FormatVersion. On success m holds the completed manifest and is
// returned with the archive's size in bytes. On error m is unchanged, the
// temporary file is removed and path is untouched.
func Create(path string, m *Manifest, imagesDir string, files []FileSource, opts WriteOptions) (*Manifest, int64, error) {
	if m == nil {
		return nil, 0, errors.New("create checkpoint archive: nil manifest")
	}
	out := *m
	out.FormatVersion = FormatVersion
	size, err := create(path, &out, imagesDir, files, opts)
	if err != nil {
		return nil, 0, fmt.Errorf("create checkpoint archive %s: %w", path, err)
	}
	*m = out
	return m, size, nil
}

// create does Create's work on a copy of the caller's manifest.
func create(path string, m *Manifest, imagesDir string, files []FileSource, opts WriteOptions) (int64, error) {
	if err := m.validateHeader(); err != nil {
		return 0, err
	}
	for _, fsrc := range files {
		if err := checkCarriedPath(fsrc.Meta.Path); err != nil {
			return 0, err
		}
	}
	if _, err := os.Lstat(path); err == nil {
		return 0, errExist
	} else if !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	images, err := listImages(imagesDir)
	if err != nil {
		return 0, err
	}
	tmp, err := createTemp(path)
	if err != nil {
		return 0, err
	}
	size, err := writeArchive(tmp, m, imagesDir, images, files, opts)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = publish(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return 0, err
	}
	return size, nil
}

// listImages returns the sorted names of the regular files in dir, and
// refuses anything else.
func listImages(dir string) ([]string, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("images directory: %w", err)
	}
	names := make([]string, 0, len(des))
	for _, de := range des {
		if !de.Type().IsRegular() {
			return nil, fmt.Errorf("images directory %s: %s is a %s, not a regular file: %w",
				dir, de.Name(), fileType(de.Type()), ErrUnsafeEntry)
		}
		if err := checkImageName(de.Name()); err != nil {
			return nil, fmt.Errorf("images directory %s: %w", dir, err)
		}
		names = append(names, de.Name())
	}
	slices.Sort(names)
	return names, nil
}

// fileType names a non-regular file type for error messages.
func fileType(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m.IsDir():
		return "directory"
	case m&fs.ModeDevice != 0:
		return "device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}

// writeArchive writes the whole zip into f, filling m's entries, and
// syncs f. It returns the archive's size.
func writeArchive(f *os.File, m *Manifest, imagesDir string, images []string, files []FileSource, opts WriteOptions) (int64, error) {
	sc := getScratch()
	sink := newFileSink(f, sc.sink)
	cw := &countWriter{w: sink}
	fw := newFrameWriter(concurrency(opts.Concurrency))
	fw.cur, fw.out = sc.frame, sc.packed
	pipe := newPipeline(frameSize, chunkDepth)
	pipe.small = sc.read
	defer func() {
		fw.shutdown()
		sink.abort() // no-op after Close
		putScratch(sc, pipe, fw, sink)
	}()
	zw := zip.NewWriter(cw)
	zw.RegisterCompressor(methodZstd, fw.reset)
	ew := &entryWriter{
		zw:       zw,
		fw:       fw,
		pipe:     pipe,
		progress: newProgress(opts.Progress),
		modified: m.Created.UTC(),
	}

	m.Entries = make([]EntryInfo, 0, len(images)+len(files))
	for _, name := range images {
		e, err := ew.add(ImagesPrefix+name, filepath.Join(imagesDir, name), true)
		if err != nil {
			return 0, err
		}
		m.Entries = append(m.Entries, e)
	}
	m.CarriedFiles = make([]CarriedFile, 0, len(files))
	for i, fsrc := range files {
		e, err := ew.add(fileEntryName(i), fsrc.Source, false)
		if err != nil {
			return 0, err
		}
		m.Entries = append(m.Entries, e)
		cf := fsrc.Meta
		cf.Entry, cf.Size = e.Name, e.Size
		m.CarriedFiles = append(m.CarriedFiles, cf)
	}
	for _, x := range opts.Extra {
		if !strings.HasPrefix(x.Name, ContainerPrefix) {
			return 0, fmt.Errorf("%w: extra entry %q is not under %s", ErrUnsafeEntry, x.Name, ContainerPrefix)
		}
		if err := checkEntryName(x.Name); err != nil {
			return 0, err
		}
		e, err := ew.add(x.Name, x.Source, true)
		if err != nil {
			return 0, err
		}
		m.Entries = append(m.Entries, e)
	}
	slices.SortFunc(m.Entries, func(a, b EntryInfo) int { return strings.Compare(a.Name, b.Name) })
	ew.progress.report()

	// Starting the manifest closes the last entry, which completes its
	// stored-bytes digests; then every entry's are known.
	w, err := zw.CreateHeader(ew.header(ManifestName, zip.Store)) // small JSON: compressing it costs more than it saves
	if err != nil {
		return 0, err
	}
	ew.noteStored()
	for i := range m.Entries {
		if d, ok := ew.stored[m.Entries[i].Name]; ok {
			m.Entries[i].StoredCRC32C, m.Entries[i].StoredSHA256 = d.record()
		}
	}
	if err := m.Validate(); err != nil {
		return 0, err
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return 0, err
	}
	if _, err := w.Write(data); err != nil {
		return 0, err
	}
	if err := zw.Close(); err != nil {
		return 0, err
	}
	if err := sink.Close(); err != nil { // writes the tail and fsyncs
		return 0, err
	}
	return cw.n, nil
}

// entryWriter streams source files into zip entries.
type entryWriter struct {
	zw       *zip.Writer
	fw       *frameWriter
	pipe     *pipeline
	progress *progress
	modified time.Time
	// stored collects each entry's digests of stored bytes, known once
	// the zip writer has closed the entry (when the next one starts).
	stored   map[string]storedDigest
	lastName string
}

// noteStored records the CRC of the last entry, which the zip writer
// closed when the (stored, so not compressed) manifest began: the frame
// writer was not reset since, so its CRC is that entry's.
func (ew *entryWriter) noteStored() {
	if ew.lastName == "" {
		return
	}
	if ew.stored == nil {
		ew.stored = map[string]storedDigest{}
	}
	ew.stored[ew.lastName] = ew.fw.stored
	ew.lastName = ""
}

// header returns a zip header for a regular 0600 file.
func (ew *entryWriter) header(name string, method uint16) *zip.FileHeader {
	fh := &zip.FileHeader{Name: name, Method: method, Modified: ew.modified}
	fh.SetMode(0o600)
	return fh
}

// add stores the file at src as entry name and returns its integrity
// record. noFollow refuses a symlink at src (image files); carried files
// may be reached through a symlink but must be regular files.
func (ew *entryWriter) add(name, src string, noFollow bool) (EntryInfo, error) {
	flags := os.O_RDONLY | syscall.O_NONBLOCK // O_NONBLOCK: never hang opening a FIFO
	if noFollow {
		flags |= syscall.O_NOFOLLOW
	}
	in, err := os.OpenFile(src, flags, 0)
	if err != nil {
		return EntryInfo{}, fmt.Errorf("open %s for %s: %w", src, name, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return EntryInfo{}, err
	}
	if !fi.Mode().IsRegular() {
		return EntryInfo{}, fmt.Errorf("%s (for %s) is a %s, not a regular file: %w", src, name, fileType(fi.Mode()), ErrUnsafeEntry)
	}

	ew.fw.expect(fi.Size())
	prev := ew.lastName
	w, err := ew.zw.CreateHeader(ew.header(name, methodZstd))
	if err != nil {
		return EntryInfo{}, err
	}
	if prev != "" { // CreateHeader closed it and reset the frame writer
		if ew.stored == nil {
			ew.stored = map[string]storedDigest{}
		}
		ew.stored[prev] = ew.fw.prevStored
	}
	ew.lastName = name
	var size int64
	err = ew.pipe.runReader(context.Background(), in, fi.Size(),
		func(b []byte) error {
			_, err := w.Write(b)
			size += int64(len(b))
			ew.progress.add(len(b))
			return err
		})
	if err != nil {
		return EntryInfo{}, fmt.Errorf("write %s from %s: %w", name, src, err)
	}
	// The digests of the stored bytes are filled in once the entry is
	// closed (see noteStored).
	return EntryInfo{Name: name, Size: size}, nil
}

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
