package archive

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// createTemp creates the temporary file Create writes into: in the same
// directory as path (so the final rename stays within one filesystem),
// named ".<base>.partial-<random>", mode 0600, created with O_EXCL.
func createTemp(path string) (*os.File, error) {
	return os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".partial-*")
}

// Export copies the archive of size bytes read from src to a new file at
// path, verifies it completely (structure, every entry's size and
// digests) and only then publishes it, never replacing an existing file:
// on error, path does not exist. It makes a self-contained copy of an
// archive held elsewhere (a deduplicated checkpoint assembled from its
// chunks, an object in a store).
func Export(src io.ReaderAt, size int64, path string) (err error) {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s: %w", path, errExist)
	}
	tmp, err := createTemp(path)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.CopyBuffer(tmp, io.NewSectionReader(src, 0, size), make([]byte, 4<<20)); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	r, err := Open(tmp.Name(), DefaultLimits())
	if err != nil {
		return fmt.Errorf("exported archive: %w", err)
	}
	verr := r.Verify(ExtractOptions{})
	r.Close()
	if verr != nil {
		return fmt.Errorf("exported archive: %w", verr)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := publish(tmp.Name(), path, true); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// errExist reports that the destination of Create already exists.
var errExist = fmt.Errorf("%w: refusing to overwrite it", fs.ErrExist)

// publish gives the complete, synced temporary file tmp its final name
// without ever replacing an existing file, then, if durable, syncs the
// directory so the new name survives a crash. If that sync fails, it
// removes the new name again: on error, path does not exist.
//
// It hard-links tmp to path, which fails atomically with EEXIST if path
// exists, and removes tmp. On filesystems without hard links it falls
// back to checking that path does not exist and renaming, which leaves a
// small window in which a concurrently created path would be replaced.
func publish(tmp, path string, durable bool) error {
	err := os.Link(tmp, path)
	switch {
	case err == nil:
		// The archive is complete under its final name; failing to remove
		// the temporary name only leaves a second link to it behind.
		_ = os.Remove(tmp)
	case errors.Is(err, fs.ErrExist):
		return errExist
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.ENOTSUP), errors.Is(err, syscall.EOPNOTSUPP),
		errors.Is(err, syscall.EXDEV), errors.Is(err, syscall.EMLINK), errors.Is(err, syscall.ENOSYS):
		if _, err := os.Lstat(path); err == nil {
			return errExist
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
	default:
		return err
	}
	if !durable {
		return nil
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// syncDir fsyncs a directory, making renames and links in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return d.Close()
}
