package container

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The writable layer of a container travels in the archive as one tar in
// the OCI image layer "changeset" format, whatever the storage on either
// side: added and changed files as themselves, a deleted file NAME as an
// empty file ".wh.NAME" beside it, and a directory whose lower contents
// are hidden ("opaque") as a ".wh..wh..opq" entry inside it. Overlayfs
// keeps the same facts differently (a 0/0 character device, the xattr
// trusted.overlay.opaque=y); the functions below translate both ways.
const (
	whiteoutPrefix = ".wh."
	opaqueWhiteout = ".wh..wh..opq"
	overlayOpaque  = "trusted.overlay.opaque"
	overlayXattrs  = "trusted.overlay."
	paxXattr       = "SCHILY.xattr."
)

// LayerStats counts what a carried writable layer holds.
type LayerStats struct {
	Entries   int   // tar entries, whiteouts included
	Whiteouts int   // deletions and opaque directories
	Bytes     int64 // content of regular files
}

// writeUpperDiff writes the changes held in an overlay upper directory as
// a changeset tar. upper must not change meanwhile (the container is
// stopped).
func writeUpperDiff(w io.Writer, upper string) (LayerStats, error) {
	return writeTree(w, upper, func(string, *syscall.Stat_t) bool { return true })
}

// writeChangedSince writes the entries of a plain rootfs directory changed
// (ctime or mtime) at or after since, with their parent directories. It
// cannot know about deletions: that is the price of a rootfs without a
// layered filesystem. File timestamps come from a coarse kernel clock
// (a tick can be several milliseconds), so a file changed just after
// since may carry an earlier time: a margin errs on carrying too much.
func writeChangedSince(w io.Writer, rootfs string, since time.Time) (LayerStats, error) {
	const timestampMargin = time.Second
	s := since.Add(-timestampMargin).UnixNano()
	return writeTree(w, rootfs, func(_ string, st *syscall.Stat_t) bool {
		return st.Ctim.Nano() >= s || st.Mtim.Nano() >= s
	})
}

// writeTree walks dir in lexical order and writes the entries keep
// selects, turning overlay whiteouts into OCI ones.
func writeTree(w io.Writer, dir string, keep func(rel string, st *syscall.Stat_t) bool) (LayerStats, error) {
	var stats LayerStats
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{} // (dev, ino) → first name, for hard links
	written := map[string]bool{}    // directories already in the tar
	var writeParents func(rel string) error
	writeParents = func(rel string) error {
		parent := path.Dir(rel)
		if parent == "." || written[parent] {
			return nil
		}
		if err := writeParents(parent); err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dir, parent), &st); err != nil {
			return err
		}
		written[parent] = true
		stats.Entries++
		return tw.WriteHeader(header(parent+"/", tar.TypeDir, &st, nil))
	}
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		mode := st.Mode & syscall.S_IFMT
		if !keep(rel, &st) {
			return nil
		}
		if err := writeParents(rel); err != nil {
			return err
		}
		xattrs, err := readXattrs(p)
		if err != nil {
			return err
		}
		var h *tar.Header
		switch mode {
		case syscall.S_IFCHR:
			if st.Rdev == 0 { // an overlay whiteout: NAME was deleted
				stats.Entries++
				stats.Whiteouts++
				wh := header(path.Join(path.Dir(rel), whiteoutPrefix+path.Base(rel)), tar.TypeReg, &st, nil)
				wh.Mode = 0
				return tw.WriteHeader(wh)
			}
			h = header(rel, tar.TypeChar, &st, xattrs)
		case syscall.S_IFBLK:
			h = header(rel, tar.TypeBlock, &st, xattrs)
		case syscall.S_IFIFO:
			h = header(rel, tar.TypeFifo, &st, xattrs)
		case syscall.S_IFSOCK:
			return nil // sockets are recreated by their owners (CRIU, for the checkpointed ones)
		case syscall.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			h = header(rel, tar.TypeSymlink, &st, xattrs)
			h.Linkname = target
		case syscall.S_IFDIR:
			if written[rel] {
				return nil
			}
			written[rel] = true
			h = header(rel+"/", tar.TypeDir, &st, xattrs)
		case syscall.S_IFREG:
			key := [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := links[key]; ok && st.Nlink > 1 {
				h = header(rel, tar.TypeLink, &st, xattrs)
				h.Linkname = first
				break
			}
			links[key] = rel
			h = header(rel, tar.TypeReg, &st, xattrs)
			h.Size = st.Size
		default:
			return nil
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		stats.Entries++
		if h.Typeflag == tar.TypeReg && h.Size > 0 {
			n, err := copyFile(tw, p, h.Size)
			stats.Bytes += n
			if err != nil {
				return err
			}
		}
		if mode == syscall.S_IFDIR {
			if v, ok := getXattr(p, overlayOpaque); ok && v == "y" {
				stats.Entries++
				stats.Whiteouts++
				oh := header(path.Join(rel, opaqueWhiteout), tar.TypeReg, &st, nil)
				oh.Mode = 0
				return tw.WriteHeader(oh)
			}
		}
		return nil
	})
	if err != nil {
		return stats, fmt.Errorf("read the container's writable layer %s: %w", dir, err)
	}
	return stats, tw.Close()
}

func header(name string, typ byte, st *syscall.Stat_t, xattrs map[string]string) *tar.Header {
	h := &tar.Header{
		Typeflag: typ, Name: name, Format: tar.FormatPAX,
		Mode: int64(st.Mode & 0o7777),
		Uid:  int(st.Uid), Gid: int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
	}
	if typ == tar.TypeChar || typ == tar.TypeBlock {
		h.Devmajor, h.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	}
	if len(xattrs) > 0 {
		h.PAXRecords = map[string]string{}
		for k, v := range xattrs {
			h.PAXRecords[paxXattr+k] = v
		}
	}
	return h
}

// copyFile copies exactly size bytes of the file at p: a file that
// changed size under us would corrupt the tar stream.
func copyFile(w io.Writer, p string, size int64) (int64, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size))
	if err == nil && n != size {
		err = fmt.Errorf("%s shrank while it was read (%d of %d bytes)", p, n, size)
	}
	return n, err
}

// readXattrs returns a file's extended attributes except overlayfs's own.
func readXattrs(p string) (map[string]string, error) {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENODATA) {
			return nil, nil
		}
		return nil, err
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, err
	}
	var out map[string]string
	for _, name := range strings.Split(string(buf[:sz]), "\x00") {
		if name == "" || strings.HasPrefix(name, overlayXattrs) {
			continue
		}
		if v, ok := getXattr(p, name); ok {
			if out == nil {
				out = map[string]string{}
			}
			out[name] = v
		}
	}
	return out, nil
}

func getXattr(p, name string) (string, bool) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			if len(buf) > 1<<20 {
				return "", false
			}
			continue
		}
		if err != nil {
			return "", false
		}
		return string(buf[:n]), true
	}
}

// errUnsafeLayer marks a changeset entry that would write outside the
// layer or otherwise cannot be trusted.
var errUnsafeLayer = errors.New("unsafe entry in the container's layer")

// applyToUpper applies a changeset tar to an overlay upper directory that
// is not mounted, turning OCI whiteouts into overlay ones. Entry names are
// confined to upper: ".." and absolute names are refused, and no path is
// ever resolved through a symlink. maxBytes bounds the content written
// (the tar's own size: a sparse entry could otherwise expand without end).
func applyToUpper(r io.Reader, upper string, maxBytes int64) (LayerStats, error) {
	var stats LayerStats
	tr := tar.NewReader(r)
	type dirTime struct {
		p string
		t time.Time
	}
	var dirs []dirTime
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return stats, fmt.Errorf("read the layer: %w", err)
		}
		rel, err := cleanEntryName(h.Name)
		if err != nil {
			return stats, err
		}
		if rel == "" {
			continue // the layer's root itself
		}
		stats.Entries++
		dir, base := path.Split(rel)
		parent, err := ensureDirs(upper, dir)
		if err != nil {
			return stats, err
		}
		if strings.HasPrefix(base, whiteoutPrefix) {
			stats.Whiteouts++
			if base == opaqueWhiteout {
				if err := unix.Lsetxattr(parent, overlayOpaque, []byte("y"), 0); err != nil {
					return stats, fmt.Errorf("mark %s opaque: %w", parent, err)
				}
				continue
			}
			name := base[len(whiteoutPrefix):]
			if name == "" || name == "." || name == ".." {
				return stats, fmt.Errorf("%w: whiteout %q", errUnsafeLayer, h.Name)
			}
			target := filepath.Join(parent, name)
			if err := removeExisting(target); err != nil {
				return stats, err
			}
			if err := unix.Mknod(target, unix.S_IFCHR, 0); err != nil {
				return stats, fmt.Errorf("write whiteout %s: %w", target, err)
			}
			continue
		}
		target := filepath.Join(parent, base)
		if h.Typeflag != tar.TypeDir {
			if err := removeExisting(target); err != nil {
				return stats, err
			}
		}
		mode := uint32(h.Mode & 0o7777)
		switch h.Typeflag {
		case tar.TypeDir:
			var st syscall.Stat_t
			if err := syscall.Lstat(target, &st); err == nil && st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
				if err := removeExisting(target); err != nil {
					return stats, err
				}
			}
			if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return stats, err
			}
			dirs = append(dirs, dirTime{target, h.ModTime})
		case tar.TypeReg:
			if h.Size < 0 || h.Size > maxBytes-stats.Bytes {
				return stats, fmt.Errorf("%w: %q claims %d bytes, more than the layer holds", errUnsafeLayer, h.Name, h.Size)
			}
			f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
			if err != nil {
				return stats, err
			}
			n, err := io.Copy(f, tr)
			stats.Bytes += n
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return stats, fmt.Errorf("write %s: %w", target, err)
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, target); err != nil {
				return stats, err
			}
		case tar.TypeLink:
			lrel, err := cleanEntryName(h.Linkname)
			if err != nil || lrel == "" {
				return stats, fmt.Errorf("%w: hard link %q -> %q", errUnsafeLayer, h.Name, h.Linkname)
			}
			ldir, lbase := path.Split(lrel)
			lparent, err := ensureDirs(upper, ldir)
			if err != nil {
				return stats, err
			}
			src := filepath.Join(lparent, lbase)
			var st syscall.Stat_t
			if err := syscall.Lstat(src, &st); err != nil || st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
				return stats, fmt.Errorf("%w: hard link %q to %q, which is not a file of the layer", errUnsafeLayer, h.Name, h.Linkname)
			}
			if err := os.Link(src, target); err != nil {
				return stats, err
			}
			continue // a link shares its target's metadata
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[h.Typeflag]
			dev := unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))
			if err := unix.Mknod(target, kind|mode, int(dev)); err != nil {
				return stats, fmt.Errorf("create %s: %w", target, err)
			}
		default: // sparse files included: writeTree never makes them
			return stats, fmt.Errorf("%w: %q has unsupported type %q", errUnsafeLayer, h.Name, h.Typeflag)
		}
		if err := setMetadata(target, h, mode); err != nil {
			return stats, err
		}
	}
	// Directory times last: creating their entries changed them.
	for i := len(dirs) - 1; i >= 0; i-- {
		ts := []unix.Timespec{unix.NsecToTimespec(dirs[i].t.UnixNano()), unix.NsecToTimespec(dirs[i].t.UnixNano())}
		_ = unix.UtimesNanoAt(unix.AT_FDCWD, dirs[i].p, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	return stats, nil
}

// setMetadata applies owner, mode, extended attributes and times.
func setMetadata(target string, h *tar.Header, mode uint32) error {
	if err := os.Lchown(target, h.Uid, h.Gid); err != nil {
		return err
	}
	if h.Typeflag != tar.TypeSymlink {
		// chmod after chown: chown clears set-user-ID bits.
		if err := unix.Fchmodat(unix.AT_FDCWD, target, mode, 0); err != nil {
			return err
		}
	}
	for k, v := range h.PAXRecords {
		name, ok := strings.CutPrefix(k, paxXattr)
		if !ok || strings.HasPrefix(name, overlayXattrs) {
			continue // overlayfs's own attributes are never taken from an archive
		}
		if err := unix.Lsetxattr(target, name, []byte(v), 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
			return fmt.Errorf("set %s on %s: %w", name, target, err)
		}
	}
	if h.Typeflag != tar.TypeDir {
		ts := []unix.Timespec{unix.NsecToTimespec(h.ModTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
		_ = unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	return nil
}

// cleanEntryName turns a tar entry name into a clean relative path ("" for
// the root), refusing anything that could leave the layer.
func cleanEntryName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%w: name contains NUL", errUnsafeLayer)
	}
	n := strings.TrimPrefix(name, "./")
	if path.IsAbs(n) {
		return "", fmt.Errorf("%w: absolute name %q", errUnsafeLayer, name)
	}
	n = path.Clean(n)
	if n == "." {
		return "", nil
	}
	if n == ".." || strings.HasPrefix(n, "../") {
		return "", fmt.Errorf("%w: name %q leaves the layer", errUnsafeLayer, name)
	}
	return n, nil
}

// ensureDirs makes sure every component of rel (a clean relative
// directory path, possibly with a trailing slash) below root is a real
// directory, creating missing ones, and returns the joined path. A
// component that is a symlink or a file is refused.
func ensureDirs(root, rel string) (string, error) {
	p := root
	for _, c := range strings.Split(strings.Trim(rel, "/"), "/") {
		if c == "" {
			continue
		}
		p = filepath.Join(p, c)
		var st syscall.Stat_t
		err := syscall.Lstat(p, &st)
		switch {
		case err == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR:
		case err == nil:
			return "", fmt.Errorf("%w: %s is not a directory", errUnsafeLayer, p)
		case errors.Is(err, syscall.ENOENT):
			if err := os.Mkdir(p, 0o755); err != nil {
				return "", err
			}
		default:
			return "", err
		}
	}
	return p, nil
}

// removeExisting removes whatever is at p (a later entry replaces an
// earlier one, as in any tar). A directory goes with its contents.
func removeExisting(p string) error {
	if err := os.RemoveAll(p); err != nil {
		return fmt.Errorf("replace %s: %w", p, err)
	}
	return nil
}

// fileSize is f's size, or 0.
func fileSize(f *os.File) int64 {
	if st, err := f.Stat(); err == nil {
		return st.Size()
	}
	return 0
}
