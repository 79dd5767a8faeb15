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

	"github.com/cedana/cedana/internal/fault"
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
	// Fault injects failures of the fsync and of the rename, for tests
	// (see package fault); nil in production.
	Fault fault.Injector
	// Transient marks an archive that only feeds a restore elsewhere and
	// is removed afterwards (a migration's, on its source): it is
	// published atomically as any other, but neither written back early
	// nor fsynced, since waiting for the disk would only keep the job
	// stopped longer. A crash may leave it truncated under its final
	// name, so it must never be recorded as a checkpoint. Ignored by
	// NewWriterTo (the destination decides).
	Transient bool
}

// ExtraFile is a container file to store in the archive.
type ExtraFile struct {
	// Name is the entry name: ContainerPrefix + one path element.
	Name string
	// Source is the path to read the content from now.
	Source string
}

// Create writes a checkpoint archive at path, atomically, from the
// images in imagesDir (which must be flat: subdirectories, symlinks and
// other non-regular files are refused) and the carried files. It is
// NewWriter, AddImageFile for each image, then Close.
//
// On success m holds the completed manifest and is returned with the
// archive's size in bytes. On error m is unchanged, the temporary file is
// removed and path is untouched.
func Create(path string, m *Manifest, imagesDir string, files []FileSource, opts WriteOptions) (*Manifest, int64, error) {
	if m == nil {
		return nil, 0, errors.New("create checkpoint archive: nil manifest")
	}
	head := *m
	head.FormatVersion = FormatVersion
	if err := head.validateHeader(); err != nil { // fail before writing anything
		return nil, 0, fmt.Errorf("create checkpoint archive %s: %w", path, err)
	}
	images, err := listImages(imagesDir)
	if err != nil {
		return nil, 0, fmt.Errorf("create checkpoint archive %s: %w", path, err)
	}
	w, err := NewWriter(path, opts)
	if err != nil {
		return nil, 0, err
	}
	return w.fill(m, imagesDir, images, files)
}

// CreateTo is Create writing into dst (see NewWriterTo) instead of a
// file; name describes dst in messages. On error dst is aborted.
func CreateTo(name string, dst Destination, m *Manifest, imagesDir string, files []FileSource, opts WriteOptions) (*Manifest, int64, error) {
	if m == nil {
		_ = dst.Abort()
		return nil, 0, errors.New("create checkpoint archive: nil manifest")
	}
	head := *m
	head.FormatVersion = FormatVersion
	if err := head.validateHeader(); err != nil {
		_ = dst.Abort()
		return nil, 0, fmt.Errorf("create checkpoint archive %s: %w", name, err)
	}
	images, err := listImages(imagesDir)
	if err != nil {
		_ = dst.Abort()
		return nil, 0, fmt.Errorf("create checkpoint archive %s: %w", name, err)
	}
	w, err := NewWriterTo(name, dst, opts)
	if err != nil {
		_ = dst.Abort()
		return nil, 0, err
	}
	return w.fill(m, imagesDir, images, files)
}

// fill adds the images and closes the archive.
func (w *Writer) fill(m *Manifest, imagesDir string, images []string, files []FileSource) (*Manifest, int64, error) {
	for _, name := range images {
		if err := w.AddImageFile(name, filepath.Join(imagesDir, name)); err != nil {
			w.Abort()
			return nil, 0, err
		}
	}
	return w.Close(m, files)
}

// Writer creates a checkpoint archive entry by entry, for callers whose
// images arrive while CRIU produces them. It writes into a temporary file
// in the same directory as the final path, named ".<base>.partial-<random>"
// with mode 0600; Close writes the manifest last, fsyncs the file, links
// it to its final name and fsyncs the directory, so a reader never sees a
// partial archive under that name. Abort (or a failed Close) removes the
// temporary file.
//
// Entries are written one at a time, in the order added; a Writer is not
// safe for concurrent use.
type Writer struct {
	path    string
	tmp     *os.File    // nil when writing to a Destination
	dst     Destination // nil when writing a file
	opts    WriteOptions
	sc      *writeScratch
	sink    archiveSink
	cw      *countWriter
	ew      *entryWriter
	entries []EntryInfo
	names   map[string]bool
	done    bool
}

// NewWriter starts an archive to be published at path. It never replaces
// an existing file: if path exists the error wraps fs.ErrExist.
func NewWriter(path string, opts WriteOptions) (*Writer, error) {
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("create checkpoint archive %s: %w", path, errExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("create checkpoint archive %s: %w", path, err)
	}
	tmp, err := createTemp(path)
	if err != nil {
		return nil, fmt.Errorf("create checkpoint archive %s: %w", path, err)
	}
	sc := getScratch()
	w := &Writer{path: path, tmp: tmp, opts: opts, sc: sc, names: map[string]bool{}}
	w.sink = newFileSink(tmp, sc.sink, opts.Transient)
	w.start()
	return w, nil
}

// NewWriterTo starts an archive written as one sequential stream into
// dst, which publishes it on Commit (an object store upload, say). name
// describes the destination in messages. Close commits dst once the
// manifest is written; Abort, or a failed Close, aborts it, so a partial
// archive never becomes visible. The archive package never learns where
// the bytes go.
func NewWriterTo(name string, dst Destination, opts WriteOptions) (*Writer, error) {
	if dst == nil {
		return nil, fmt.Errorf("create checkpoint archive %s: nil destination", name)
	}
	sc := getScratch()
	w := &Writer{path: name, dst: dst, opts: opts, sc: sc, names: map[string]bool{}}
	w.sink = newStreamSink(dst)
	w.start()
	return w, nil
}

// start sets up the zip and frame writers over w.sink.
func (w *Writer) start() {
	sc, opts := w.sc, w.opts
	w.cw = &countWriter{w: w.sink}
	fw := newFrameWriter(concurrency(opts.Concurrency))
	fw.cur, fw.out = sc.frame, sc.packed
	pipe := newPipeline(frameSize, chunkDepth)
	pipe.small = sc.read
	zw := zip.NewWriter(w.cw)
	zw.RegisterCompressor(methodZstd, fw.reset)
	if fd, ok := w.dst.(FrameDestination); ok {
		// The zip writer buffers; flushed, the count is the frame's
		// offset in the stream.
		fw.onFrame = func(n int) error {
			if err := zw.Flush(); err != nil {
				return err
			}
			fd.Frame(w.cw.n, int64(n))
			return nil
		}
	}
	w.ew = &entryWriter{
		zw:       zw,
		fw:       fw,
		pipe:     pipe,
		progress: newProgress(opts.Progress),
		modified: time.Now().UTC(),
	}
}

// AddImage stores the CRIU image name, read from r until EOF, as
// images/<name>. size is the expected length (-1 if unknown), a hint for
// buffer sizes.
func (w *Writer) AddImage(name string, r io.Reader, size int64) error {
	if err := checkImageName(name); err != nil {
		return w.fail(err)
	}
	e, err := w.ew.addReader(ImagesPrefix+name, r, size)
	if err != nil {
		return w.fail(fmt.Errorf("write %s: %w", ImagesPrefix+name, err))
	}
	return w.added(e)
}

// AddImageFile stores the regular file src (never through a symlink) as
// images/<name>.
func (w *Writer) AddImageFile(name, src string) error {
	if err := checkImageName(name); err != nil {
		return w.fail(err)
	}
	e, err := w.ew.add(ImagesPrefix+name, src, true)
	if err != nil {
		return w.fail(err)
	}
	return w.added(e)
}

// added records a written entry, refusing a name given twice.
func (w *Writer) added(e EntryInfo) error {
	if w.names[e.Name] {
		return w.fail(fmt.Errorf("%w: entry %s added twice", ErrUnsafeEntry, e.Name))
	}
	w.names[e.Name] = true
	w.entries = append(w.entries, e)
	return nil
}

func (w *Writer) fail(err error) error {
	return fmt.Errorf("create checkpoint archive %s: %w", w.path, err)
}

// Close adds the carried files (as files/<i>, in order) and the extra
// container files of the options, writes the manifest, and publishes the
// archive. m must pass Validate once its entries are filled in;
// m.FormatVersion is set to FormatVersion. On success m holds the
// completed manifest and is returned with the archive's size in bytes; on
// error m is unchanged and nothing is left behind.
func (w *Writer) Close(m *Manifest, files []FileSource) (*Manifest, int64, error) {
	if w.done {
		return nil, 0, w.fail(errors.New("writer already closed"))
	}
	if m == nil {
		w.Abort()
		return nil, 0, w.fail(errors.New("nil manifest"))
	}
	out := *m
	out.FormatVersion = FormatVersion
	size, err := w.finish(&out, files)
	if w.dst != nil {
		if err == nil {
			if err = w.opts.Fault.At(fault.ArchiveRename); err != nil {
				err = fmt.Errorf("commit %s: %w", w.path, err)
			} else {
				err = w.dst.Commit() // on error, the destination aborted itself
			}
		} else {
			_ = w.dst.Abort()
		}
		w.release()
		if err != nil {
			return nil, 0, w.fail(err)
		}
		*m = out
		return m, size, nil
	}
	if cerr := w.tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if err = w.opts.Fault.At(fault.ArchiveRename); err != nil {
			err = fmt.Errorf("rename %s: %w", w.tmp.Name(), err)
		} else {
			err = publish(w.tmp.Name(), w.path, !w.opts.Transient)
		}
	}
	w.release()
	if err != nil {
		os.Remove(w.tmp.Name())
		return nil, 0, w.fail(err)
	}
	*m = out
	return m, size, nil
}

// Abort abandons the archive and removes its temporary file. It is a
// no-op after Close.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.sink.abort()
	if w.dst != nil {
		_ = w.dst.Abort()
	} else {
		w.tmp.Close()
		os.Remove(w.tmp.Name())
	}
	w.release()
}

// release stops the writer's goroutines and returns its buffers.
func (w *Writer) release() {
	w.done = true
	w.ew.fw.shutdown()
	w.sink.abort() // no-op after Close
	putScratch(w.sc, w.ew.pipe, w.ew.fw, w.sink)
}

// DirSize returns the total size of the entries of dir (not descending
// into subdirectories): what Create reads from an images directory, for a
// progress total. Unreadable entries count as empty.
func DirSize(dir string) int64 {
	var n int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if info, err := e.Info(); err == nil {
			n += info.Size()
		}
	}
	return n
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

// finish writes the carried and extra files and the manifest, filling
// m's entries, and syncs the file. It returns the archive's size.
func (w *Writer) finish(m *Manifest, files []FileSource) (int64, error) {
	if err := m.validateHeader(); err != nil {
		return 0, err
	}
	for _, fsrc := range files {
		if err := checkCarriedPath(fsrc.Meta.Path); err != nil {
			return 0, err
		}
	}
	ew, opts := w.ew, w.opts
	m.Entries = append(make([]EntryInfo, 0, len(w.entries)+len(files)+len(opts.Extra)), w.entries...)
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
	mw, err := ew.zw.CreateHeader(ew.header(ManifestName, zip.Store)) // small JSON: compressing it costs more than it saves
	if err != nil {
		return 0, err
	}
	ew.noteStored()
	for i := range m.Entries {
		if d, ok := ew.stored[m.Entries[i].Name]; ok {
			d.record(&m.Entries[i])
		}
	}
	if err := m.Validate(); err != nil {
		return 0, err
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return 0, err
	}
	if _, err := mw.Write(data); err != nil {
		return 0, err
	}
	if err := ew.zw.Close(); err != nil {
		return 0, err
	}
	if err := w.sink.Close(); err != nil { // writes the tail and fsyncs
		return 0, err
	}
	if err := w.opts.Fault.At(fault.ArchiveFsync); err != nil && (w.tmp == nil || !w.opts.Transient) {
		return 0, fmt.Errorf("sync %s: %w", w.path, err)
	}
	return w.cw.n, nil
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
	stored   map[string]*digests
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
		ew.stored = map[string]*digests{}
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
	e, err := ew.addReader(name, in, fi.Size())
	if err != nil {
		return EntryInfo{}, fmt.Errorf("write %s from %s: %w", name, src, err)
	}
	return e, nil
}

// addReader stores what r yields until EOF as entry name. size is the
// expected length (-1 if unknown), a hint for buffer sizes.
func (ew *entryWriter) addReader(name string, in io.Reader, size int64) (EntryInfo, error) {
	ew.fw.expect(max(size, 0))
	prev := ew.lastName
	w, err := ew.zw.CreateHeader(ew.header(name, methodZstd))
	if err != nil {
		return EntryInfo{}, err
	}
	if prev != "" { // CreateHeader closed it and reset the frame writer
		if ew.stored == nil {
			ew.stored = map[string]*digests{}
		}
		ew.stored[prev] = ew.fw.prevStored
	}
	ew.lastName = name
	var n int64
	err = ew.pipe.runReader(context.Background(), in, size,
		func(b []byte) error {
			_, err := w.Write(b)
			n += int64(len(b))
			ew.progress.add(len(b))
			return err
		})
	if err != nil {
		return EntryInfo{}, err
	}
	// The digests of the stored bytes are filled in once the entry is
	// closed (see noteStored).
	return EntryInfo{Name: name, Size: n}, nil
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
