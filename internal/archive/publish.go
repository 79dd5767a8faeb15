package archive

import (
	"errors"
	"fmt"
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

// errExist reports that the destination of Create already exists.
var errExist = fmt.Errorf("%w: refusing to overwrite it", fs.ErrExist)

// publish gives the complete, synced temporary file tmp its final name
// without ever replacing an existing file, then syncs the directory so the
// new name survives a crash. If that sync fails, it removes the new name
// again: on error, path does not exist.
//
// It hard-links tmp to path, which fails atomically with EEXIST if path
// exists, and removes tmp. On filesystems without hard links it falls
// back to checking that path does not exist and renaming, which leaves a
// small window in which a concurrently created path would be replaced.
func publish(tmp, path string) error {
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
