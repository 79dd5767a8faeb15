package archive

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Manifest kinds.
const (
	KindProcess = "process"
	KindDocker  = "docker"
	KindRunc    = "runc"
)

// Validate checks that the manifest is well formed and self-consistent:
// a readable format version, a known kind, a process tree rooted at
// RootPID, valid and unique entry names with sane sizes and digests, and
// carried files with absolute clean paths that point at their own files/
// entry. It does not look at the archive itself (Open does that).
//
// Errors wrap ErrUnsupportedVersion (as a *VersionError), ErrUnsafeEntry
// (bad names or paths) or ErrCorrupt (anything else).
func (m *Manifest) Validate() error {
	if err := m.validateHeader(); err != nil {
		return err
	}
	sizes, err := m.validateEntries()
	if err != nil {
		return err
	}
	return m.validateCarriedFiles(sizes)
}

// validateHeader checks everything but Entries and CarriedFiles.
func (m *Manifest) validateHeader() error {
	if m.FormatVersion < MinReadableVersion || m.FormatVersion > FormatVersion {
		return &VersionError{Version: m.FormatVersion, Min: MinReadableVersion, Max: FormatVersion}
	}
	switch m.Kind {
	case KindProcess:
		if m.Container != nil {
			return fmt.Errorf("%w: a process checkpoint has container information", ErrCorrupt)
		}
	case KindDocker, KindRunc:
		if m.Container == nil || m.Container.Runtime != m.Kind {
			return fmt.Errorf("%w: a %s checkpoint lacks its container information", ErrCorrupt, m.Kind)
		}
	default:
		return fmt.Errorf("%w: unknown manifest kind %q (want %s, %s or %s)", ErrCorrupt, m.Kind, KindProcess, KindDocker, KindRunc)
	}
	if m.RootPID <= 0 {
		return fmt.Errorf("%w: manifest root_pid is %d", ErrCorrupt, m.RootPID)
	}
	if len(m.Processes) == 0 || m.Processes[0].PID != m.RootPID {
		return fmt.Errorf("%w: manifest processes must start with the root process %d", ErrCorrupt, m.RootPID)
	}
	return nil
}

// validateEntries checks Entries and returns each entry's size by name.
func (m *Manifest) validateEntries() (map[string]int64, error) {
	sizes := make(map[string]int64, len(m.Entries))
	for _, e := range m.Entries {
		if err := checkEntryName(e.Name); err != nil {
			return nil, &EntryError{Entry: e.Name, Err: err}
		}
		if _, dup := sizes[e.Name]; dup {
			return nil, entryErr(e.Name, ErrUnsafeEntry, "listed twice in the manifest")
		}
		if e.Size < 0 {
			return nil, entryErr(e.Name, ErrCorrupt, "negative size %d in the manifest", e.Size)
		}
		if e.StoredCRC32C != "" && (len(e.StoredCRC32C) != 8 || !isLowerHex(e.StoredCRC32C)) {
			return nil, entryErr(e.Name, ErrCorrupt, "stored_crc32c %q is not 8 lowercase hex digits", e.StoredCRC32C)
		}
		if m.FormatVersion < 2 {
			if !isSHA256Hex(e.SHA256) {
				return nil, entryErr(e.Name, ErrCorrupt, "sha256 %q is not 64 lowercase hex digits", e.SHA256)
			}
		} else {
			if !isSHA256Hex(e.StoredSHA256) {
				return nil, entryErr(e.Name, ErrCorrupt, "stored_sha256 %q is not 64 lowercase hex digits", e.StoredSHA256)
			}
			if e.SHA256 != "" {
				return nil, entryErr(e.Name, ErrCorrupt, "sha256 belongs to format 1, not %d", m.FormatVersion)
			}
		}
		switch {
		case m.FormatVersion >= 3 && (len(e.StoredXXH3) != 32 || !isLowerHex(e.StoredXXH3)):
			return nil, entryErr(e.Name, ErrCorrupt, "stored_xxh3 %q is not 32 lowercase hex digits", e.StoredXXH3)
		case m.FormatVersion < 3 && e.StoredXXH3 != "":
			return nil, entryErr(e.Name, ErrCorrupt, "stored_xxh3 belongs to format 3 and later, not %d", m.FormatVersion)
		}
		sizes[e.Name] = e.Size
	}
	return sizes, nil
}

// validateCarriedFiles checks CarriedFiles against the entry sizes: every
// carried file has its own files/ entry, and every files/ entry belongs to
// exactly one carried file.
func (m *Manifest) validateCarriedFiles(sizes map[string]int64) error {
	used := make(map[string]bool, len(m.CarriedFiles))
	paths := make(map[string]bool, len(m.CarriedFiles))
	for _, cf := range m.CarriedFiles {
		if err := checkCarriedPath(cf.Path); err != nil {
			return err
		}
		if paths[cf.Path] {
			return fmt.Errorf("%w: carried file %q is listed twice", ErrUnsafeEntry, cf.Path)
		}
		paths[cf.Path] = true
		if !strings.HasPrefix(cf.Entry, FilesPrefix) {
			return fmt.Errorf("%w: carried file %q: entry %q is not under %s", ErrUnsafeEntry, cf.Path, cf.Entry, FilesPrefix)
		}
		size, ok := sizes[cf.Entry]
		if !ok {
			return fmt.Errorf("%w: carried file %q: entry %q is not listed in the manifest entries", ErrCorrupt, cf.Path, cf.Entry)
		}
		if used[cf.Entry] {
			return fmt.Errorf("%w: carried file %q: entry %q is used by two carried files", ErrUnsafeEntry, cf.Path, cf.Entry)
		}
		used[cf.Entry] = true
		if cf.Size != size {
			return fmt.Errorf("%w: carried file %q: size %d differs from its entry's size %d", ErrCorrupt, cf.Path, cf.Size, size)
		}
	}
	for _, e := range m.Entries {
		if strings.HasPrefix(e.Name, FilesPrefix) && !used[e.Name] {
			return entryErr(e.Name, ErrCorrupt, "no carried file refers to this entry")
		}
	}
	return nil
}

// checkCarriedPath checks that p is an absolute, clean path other than "/".
func checkCarriedPath(p string) error {
	if len(p) < 2 || !strings.HasPrefix(p, "/") || strings.IndexByte(p, 0) >= 0 || filepath.Clean(p) != p {
		return fmt.Errorf("%w: carried file path %q is not an absolute clean path", ErrUnsafeEntry, p)
	}
	return nil
}

// isSHA256Hex reports whether s is a SHA-256 digest in lowercase hex.
func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// isLowerHex reports whether s is made of lowercase hex digits.
func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
