package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cedana/cedana/internal/archive"
)

// putBack records what putBackFiles changed on the host, so that a
// restore that fails afterwards can leave the host as it found it.
type putBack struct {
	written []string          // files created, in order
	dirs    []string          // directories created, parents first
	backups map[string]string // replaced file → its backup
}

// undo removes what was written and puts the backups back, newest first.
// It returns the changes it could not undo.
func (p *putBack) undo() []string {
	var left []string
	for i := len(p.written) - 1; i >= 0; i-- {
		path := p.written[i]
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			left = append(left, fmt.Sprintf("remove %s: %v", path, err))
			continue
		}
		if bak, ok := p.backups[path]; ok {
			if err := os.Rename(bak, path); err != nil {
				left = append(left, fmt.Sprintf("put back %s from %s: %v", path, bak, err))
			}
			delete(p.backups, path)
		}
	}
	for path, bak := range p.backups { // backed up, never written
		if err := os.Rename(bak, path); err != nil {
			left = append(left, fmt.Sprintf("put back %s from %s: %v", path, bak, err))
		}
	}
	for i := len(p.dirs) - 1; i >= 0; i-- {
		_ = os.Remove(p.dirs[i]) // only if still empty
	}
	return left
}

// putBackFiles makes the carried files exist again at their paths, so that
// a restore on a machine that lacks them (same root filesystem otherwise)
// succeeds. A file already there with the recorded size is left alone; one
// that differs is replaced only with replace set, after a backup. Paths,
// and the directories created on the way to them, are opened without
// following symlinks, so an archive cannot redirect a write through a link
// planted on the host.
//
// beforeWrite, if set, is called once before the first change to the host
// (a backup or a write); its error stops putBackFiles with nothing
// changed. On any error, what was changed is undone before it returns; on
// success, the caller undoes it (putBack.undo) if the restore fails.
func putBackFiles(staging string, files []archive.CarriedFile, replace bool, beforeWrite func() error) (pb *putBack, err error) {
	pb = &putBack{backups: map[string]string{}}
	defer func() {
		if err != nil {
			if left := pb.undo(); len(left) > 0 {
				err = fmt.Errorf("%w; and the host could not be put back as it was: %s", err, strings.Join(left, "; "))
			}
			pb = &putBack{}
		}
	}()
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
			return pb, fmt.Errorf("check %s: %w", cf.Path, err)
		case !st.Mode().IsRegular():
			return pb, fmt.Errorf("%w %s: it exists and is not a regular file (%s)", errUnsafeFile, cf.Path, st.Mode().Type())
		case st.Size() == cf.Size:
			continue
		case !replace:
			continue // CRIU decides; its error then suggests --replace-files
		default:
			if err := ready(); err != nil {
				return pb, err
			}
			bak := fmt.Sprintf("%s.cedana-bak-%s", cf.Path, time.Now().UTC().Format("20060102T150405Z"))
			if err := os.Rename(cf.Path, bak); err != nil {
				return pb, fmt.Errorf("back up %s: %w", cf.Path, err)
			}
			pb.backups[cf.Path] = bak
		}
		if err := ready(); err != nil {
			return pb, err
		}
		if err := pb.writeCarried(filepath.Join(staging, filepath.FromSlash(cf.Entry)), cf); err != nil {
			return pb, err
		}
	}
	return pb, nil
}

// mkdirNoFollow creates the missing directories of the absolute path dir
// like MkdirAll, but refuses to pass through a symlink, and records the
// ones it created.
func (p *putBack) mkdirNoFollow(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("%w %s: not an absolute path", errUnsafeFile, dir)
	}
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	// Each step opens one name beneath the directory before it.
	dirHow := &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_BENEATH,
	}
	cur := "/"
	for _, name := range strings.Split(filepath.Clean(dir), "/") {
		if name == "" {
			continue
		}
		cur = filepath.Join(cur, name)
		next, err := unix.Openat2(fd, name, dirHow)
		if errors.Is(err, unix.ENOENT) {
			if err = unix.Mkdirat(fd, name, 0o755); err == nil {
				p.dirs = append(p.dirs, cur)
			} else if !errors.Is(err, unix.EEXIST) {
				unix.Close(fd)
				return fmt.Errorf("create directory %s: %w", cur, err)
			}
			next, err = unix.Openat2(fd, name, dirHow)
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("%w: directory %s: %v (symlinks are not followed)", errUnsafeFile, cur, err)
		}
		fd = next
	}
	unix.Close(fd)
	return nil
}

func (p *putBack) writeCarried(src string, cf archive.CarriedFile) error {
	if err := p.mkdirNoFollow(filepath.Dir(cf.Path)); err != nil {
		return err
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
	p.written = append(p.written, cf.Path)
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
