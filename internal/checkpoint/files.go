package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cedana/cedana/internal/archive"
)

// putBackFiles makes the carried files exist again at their paths, so that
// a restore on a machine that lacks them (same root filesystem otherwise)
// succeeds. A file already there with the recorded size is left alone; one
// that differs is replaced only with replace set, after a backup. Paths are
// opened without following symlinks, so an archive cannot redirect a write
// through a link planted on the host.
//
// beforeWrite, if set, is called once before the first change to the host
// (a backup or a write); its error stops putBackFiles with nothing
// changed.
func putBackFiles(staging string, files []archive.CarriedFile, replace bool, beforeWrite func() error) ([]string, error) {
	var written []string
	first := true
	ready := func() error {
		if !first || beforeWrite == nil {
			return nil
		}
		first = false
		return beforeWrite()
	}
	for _, cf := range files {
		st, err := os.Lstat(cf.Path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return written, fmt.Errorf("check %s: %w", cf.Path, err)
		case !st.Mode().IsRegular():
			return written, fmt.Errorf("%w %s: it exists and is not a regular file (%s)", errUnsafeFile, cf.Path, st.Mode().Type())
		case st.Size() == cf.Size:
			continue
		case !replace:
			continue // CRIU decides; its error then suggests --replace-files
		default:
			if err := ready(); err != nil {
				return written, err
			}
			bak := fmt.Sprintf("%s.cedana-bak-%s", cf.Path, time.Now().UTC().Format("20060102T150405Z"))
			if err := os.Rename(cf.Path, bak); err != nil {
				return written, fmt.Errorf("back up %s: %w", cf.Path, err)
			}
		}
		if err := ready(); err != nil {
			return written, err
		}
		if err := writeCarried(filepath.Join(staging, filepath.FromSlash(cf.Entry)), cf); err != nil {
			return written, err
		}
		written = append(written, cf.Path)
	}
	return written, nil
}

func writeCarried(src string, cf archive.CarriedFile) error {
	if err := os.MkdirAll(filepath.Dir(cf.Path), 0o755); err != nil {
		return fmt.Errorf("create directory for %s: %w", cf.Path, err)
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fd, err := unix.Openat2(unix.AT_FDCWD, cf.Path, &unix.OpenHow{
		Flags:   unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_CLOEXEC,
		Mode:    uint64(cf.Mode & 0o777),
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return fmt.Errorf("%w %s: %v", errUnsafeFile, cf.Path, err)
	}
	out := os.NewFile(uintptr(fd), cf.Path)
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		return fmt.Errorf("write %s: %w", cf.Path, err)
	}
	_ = out.Chown(cf.UID, cf.GID)
	_ = out.Chmod(fs.FileMode(cf.Mode & 0o777))
	if err := out.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", cf.Path, err)
	}
	return out.Close()
}
