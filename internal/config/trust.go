package config

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// UntrustedFileError is a configuration file that someone other than root
// and the invoking user could have written. Such a file is refused as a
// whole: hooks and criu.path run as the invoking user (root, for the
// daemon), and most other keys (socket_group, tls_client_ca, the
// directories archives go to) grant as much.
type UntrustedFileError struct {
	// Path is the file; Reason says who else could write it; Fix is the
	// command that makes it safe.
	Path, Reason, Fix string
}

func (e *UntrustedFileError) Error() string {
	return fmt.Sprintf("config %s: refusing to read it: %s, and it may name hooks or a CRIU binary that would run as you; fix: %s",
		e.Path, e.Reason, e.Fix)
}

// maxConfigBytes bounds a configuration file.
const maxConfigBytes = 1 << 20

// readTrusted reads a configuration file if, and only if, CheckTrusted
// accepts it. It checks the file it opened, not a path that could be
// swapped between the check and the read.
func readTrusted(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, err
		}
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	if err := checkTrusted(path, fi, os.Getuid()); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("config %s: larger than %d bytes", path, maxConfigBytes)
	}
	return data, nil
}

// CheckTrusted returns an *UntrustedFileError when the file at path, or
// the directory holding it, could be written by someone other than root
// and the user with uid: a file owned by another user, or writable by its
// group or by others; a directory owned by another user, or writable by
// group or others without the sticky bit (they could replace the file).
func CheckTrusted(path string, uid int) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return checkTrusted(path, fi, uid)
}

func checkTrusted(path string, fi os.FileInfo, uid int) error {
	if err := trustedOwnerMode(path, fi, uid, false); err != nil {
		return err
	}
	dir := filepath.Dir(path)
	di, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if err := trustedOwnerMode(dir, di, uid, true); err != nil {
		err.Path = path
		return err
	}
	return nil
}

func trustedOwnerMode(path string, fi os.FileInfo, uid int, isDir bool) *UntrustedFileError {
	what := "it"
	if isDir {
		what = "its directory " + path
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != uid {
		return &UntrustedFileError{Path: path, Reason: fmt.Sprintf("%s belongs to user %d, neither root nor you (%d)", what, st.Uid, uid),
			Fix: fmt.Sprintf("chown root %s (or your own user)", path)}
	}
	mode := fi.Mode()
	if mode.Perm()&0o022 == 0 || (isDir && mode&os.ModeSticky != 0) {
		return nil
	}
	return &UntrustedFileError{Path: path, Reason: fmt.Sprintf("%s is writable by its group or by others (mode %04o)", what, mode.Perm()),
		Fix: "chmod go-w " + path}
}
