package archive

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// ExtractOptions tunes Extract and Verify.
type ExtractOptions struct {
	// Progress, if set, is called from time to time with the number of
	// uncompressed bytes processed so far. Calls are serialized and their
	// values increase; it may be called from any goroutine.
	Progress func(done int64)
	// Concurrency is the number of entries processed in parallel; 0 means
	// runtime.NumCPU(). Each large entry additionally runs its
	// decompression, hashing and writing in separate goroutines.
	Concurrency int
	// Skip, if set, leaves out the entries for which it returns true
	// (their content is neither read nor checked here).
	Skip func(name string) bool

	allDigests bool // check every digest recorded, not only the fastest (Verify)
}

// Extract writes every entry into dir, which must exist and be empty (the
// caller creates it, mode 0700): images/<name> goes to dir/images/<name>
// and files/N to dir/files/N. Directories are created 0700, files 0600
// with O_EXCL|O_NOFOLLOW, through an os.Root so nothing can land outside
// dir.
//
// Before writing it checks that dir's filesystem has room for the
// manifest's total size (ErrTooLarge otherwise). While writing it checks
// every entry's size and digest (see checksFor); a stream longer than declared is cut
// off. On error it returns an error naming the bad entry (an *EntryError
// wrapping ErrCorrupt for damaged content) and leaves what it wrote in
// place: the caller removes dir. Files are not fsynced.
func (r *Reader) Extract(dir string, opts ExtractOptions) error {
	if err := checkEmptyDir(dir); err != nil {
		return err
	}
	var total int64
	for _, e := range r.Manifest.Entries {
		if opts.Skip == nil || !opts.Skip(e.Name) {
			total += e.Size
		}
	}
	if err := checkFreeSpace(dir, total); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	subs := []string{ImagesPrefix, FilesPrefix}
	for _, e := range r.Manifest.Entries {
		if strings.HasPrefix(e.Name, ContainerPrefix) {
			subs = append(subs, ContainerPrefix)
			break
		}
	}
	for _, sub := range subs {
		if err := root.Mkdir(sub[:len(sub)-1], 0o700); err != nil {
			return fmt.Errorf("extract checkpoint archive: %w", err)
		}
	}
	return r.forEachEntry(opts, func(e *entry) (io.Writer, func() error, error) {
		f, err := root.OpenFile(e.info.Name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("extract %s: %w", e.info.Name, err)
		}
		return f, f.Close, nil
	})
}

// Verify decompresses every entry and checks its size and every digest the
// manifest records for it (SHA-256 and, from format 3, XXH3-128), without
// writing anything. Errors are those of Extract.
func (r *Reader) Verify(opts ExtractOptions) error {
	opts.allDigests = true
	return r.forEachEntry(opts, func(*entry) (io.Writer, func() error, error) { return nil, nil, nil })
}

// checkEmptyDir checks that dir is an existing, empty directory (not a
// symlink to one).
func checkEmptyDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("extract checkpoint archive: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("extract checkpoint archive: %s is not a directory", dir)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("extract checkpoint archive: %w", err)
	}
	defer d.Close()
	if names, _ := d.Readdirnames(1); len(names) > 0 {
		return fmt.Errorf("extract checkpoint archive: directory %s is not empty", dir)
	}
	return nil
}

// checkFreeSpace fails with ErrTooLarge if dir's filesystem has less than
// need bytes available.
func checkFreeSpace(dir string, need int64) error {
	avail, ok, err := freeSpace(dir)
	if err != nil {
		return fmt.Errorf("extract checkpoint archive: free space of %s: %w", dir, err)
	}
	if ok && need > avail {
		return fmt.Errorf("%w: extracting needs %d bytes but %s has only %d available", ErrTooLarge, need, dir, avail)
	}
	return nil
}

// openFunc returns where one entry's content goes (nil to discard it) and
// how to finish it.
type openFunc func(e *entry) (w io.Writer, closeFn func() error, err error)

// forEachEntry streams every entry through open's writer with up to
// opts.Concurrency entries in flight, largest first, and returns the first
// error.
func (r *Reader) forEachEntry(opts ExtractOptions, open openFunc) error {
	work := make([]*entry, 0, len(r.entries))
	for _, e := range r.entries {
		if opts.Skip == nil || !opts.Skip(e.info.Name) {
			work = append(work, e)
		}
	}
	slices.SortFunc(work, func(a, b *entry) int { // largest first
		return cmp.Or(cmp.Compare(b.info.Size, a.info.Size), strings.Compare(a.info.Name, b.info.Name))
	})
	workers := concurrency(opts.Concurrency)
	n := min(workers, len(work))
	// Goroutines decoding the frames of one large entry; more than the
	// pipeline has buffers for would wait.
	frameWorkers := min(workers, chunkDepth-2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	prog := newProgress(opts.Progress)
	var (
		mu       sync.Mutex
		next     int
		firstErr error
		wg       sync.WaitGroup
	)
	take := func() *entry {
		mu.Lock()
		defer mu.Unlock()
		if next == len(work) || firstErr != nil {
			return nil
		}
		next++
		return work[next-1]
	}
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
			cancel()
		}
	}
	for range n {
		wg.Go(func() {
			dec := &decoders{}
			defer dec.close()
			pipe := newPipeline(frameSize, chunkDepth)
			for e := take(); e != nil; e = take() {
				if err := r.processEntry(ctx, e, dec, frameWorkers, pipe, prog, open, opts.allDigests); err != nil {
					fail(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr == nil {
		prog.report()
	}
	return firstErr
}

// processEntry decompresses one entry into its writer (if any), checking
// its size (never producing more than declared) and digest. Decoding,
// hashing and writing run in parallel; large zstd entries are also decoded
// on several cores (decodeFrames).
func (r *Reader) processEntry(ctx context.Context, e *entry, dec *decoders, workers int, pipe *pipeline, prog *progress, open openFunc, allDigests bool) (err error) {
	name := e.info.Name
	w, closeFn, err := open(e)
	if err != nil {
		return err
	}
	if closeFn != nil {
		defer func() {
			if cerr := closeFn(); err == nil && cerr != nil {
				err = fmt.Errorf("extract %s: %w", name, cerr)
			}
		}()
	}
	// Format 1 records the SHA-256 of the content; later formats that of
	// the stored bytes, which checkStored verifies.
	var h hash.Hash
	if e.info.SHA256 != "" {
		h = sha256.New()
	}
	var size int64
	var writeErr error
	stages := []func([]byte) error{func(b []byte) error {
		if h != nil {
			h.Write(b)
		}
		size += int64(len(b))
		if w == nil {
			prog.add(len(b))
		}
		return nil
	}}
	if w != nil {
		stages = append(stages, func(b []byte) error {
			if _, err := w.Write(b); err != nil {
				writeErr = err
				return err
			}
			prog.add(len(b))
			return nil
		})
	}
	if err := checkStored(r.src, e, allDigests); err != nil {
		return &EntryError{Entry: name, Err: err}
	}
	src := io.NewSectionReader(r.src, e.dataOffset, e.compSize)
	if e.method == methodZstd && e.info.Size > int64(pipe.bufSize) {
		err = pipe.run(ctx, func(f *flow) error {
			return decodeFrames(f, src, dec, workers, e.info.Size)
		}, stages...)
	} else {
		var rd io.Reader
		if rd, err = dec.open(e.method, src); err == nil {
			err = pipe.runReader(ctx, &sizeGuard{r: rd, left: e.info.Size}, e.info.Size, stages...)
		}
	}
	switch {
	case writeErr != nil:
		return fmt.Errorf("extract %s: %w", name, writeErr)
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, ErrCorrupt):
		return &EntryError{Entry: name, Err: err}
	case err != nil:
		return entryErr(name, ErrCorrupt, "cannot decompress: %w", err)
	case size != e.info.Size:
		return entryErr(name, ErrCorrupt, "truncated: %d of %d bytes", size, e.info.Size)
	}
	if h != nil {
		if sum := h.Sum(nil); hex.EncodeToString(sum) != e.info.SHA256 {
			return entryErr(name, ErrCorrupt, "SHA-256 mismatch: content is %x, manifest says %s", sum, e.info.SHA256)
		}
	}
	return nil
}

// checkStored compares the digests of an entry's stored bytes with the
// manifest's (see checksFor; all asks for every recorded digest). It reads
// the compressed bytes before they are decoded, so nothing decodes bytes
// that are not the ones the manifest describes.
func checkStored(f io.ReaderAt, e *entry, all bool) error {
	d := checksFor(e.info, all)
	if d.none() {
		return nil
	}
	if _, err := io.Copy(d, io.NewSectionReader(f, e.dataOffset, e.compSize)); err != nil {
		return fmt.Errorf("%w: read stored bytes: %v", ErrCorrupt, err)
	}
	return d.verify(e.info)
}
