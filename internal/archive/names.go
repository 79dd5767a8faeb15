package archive

import (
	"fmt"
	"strconv"
	"strings"
)

// Entry naming rules. They are deliberately narrow so that an entry name
// can be joined to an extraction directory without any path resolution:
//
//	images/<name>  name is 1..maxImageNameLen characters of [A-Za-z0-9._-],
//	               and neither "." nor ".."
//	files/<N>      N is a decimal index without leading zeros (0..maxFileIndex)
//	container/<name>  as images/<name>
const (
	maxImageNameLen = 255
	maxFileIndex    = 999_999_999
)

// checkEntryName reports whether name is a valid entry name (other than
// the manifest). The error wraps ErrUnsafeEntry.
func checkEntryName(name string) error {
	switch {
	case strings.HasPrefix(name, ImagesPrefix):
		return checkImageName(name[len(ImagesPrefix):])
	case strings.HasPrefix(name, FilesPrefix):
		if _, ok := parseFileIndex(name[len(FilesPrefix):]); !ok {
			return fmt.Errorf("%w: %q: a carried file entry must be %s<decimal index>", ErrUnsafeEntry, name, FilesPrefix)
		}
		return nil
	case strings.HasPrefix(name, ContainerPrefix):
		return checkImageName(name[len(ContainerPrefix):])
	default:
		return fmt.Errorf("%w: %q is not under %s, %s or %s", ErrUnsafeEntry, name, ImagesPrefix, FilesPrefix, ContainerPrefix)
	}
}

// checkImageName checks a CRIU image file name (the part after "images/").
func checkImageName(base string) error {
	if base == "" || base == "." || base == ".." || len(base) > maxImageNameLen {
		return fmt.Errorf("%w: image name %q is empty, \".\", \"..\" or too long", ErrUnsafeEntry, base)
	}
	for i := 0; i < len(base); i++ {
		c := base[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: image name %q contains %q (allowed: letters, digits, '.', '_', '-')", ErrUnsafeEntry, base, c)
		}
	}
	return nil
}

// parseFileIndex parses the N of "files/N".
func parseFileIndex(s string) (int, bool) {
	if s == "" || len(s) > 9 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n <= maxFileIndex
}

// fileEntryName returns the entry name of the i-th carried file.
func fileEntryName(i int) string { return FilesPrefix + strconv.Itoa(i) }
