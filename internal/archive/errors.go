package archive

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package that is caused by
// the content of an archive wraps exactly one of them, so callers can
// branch with errors.Is.
var (
	// ErrNotArchive means the file is not a zip, or is a zip without a
	// manifest.json.
	ErrNotArchive = errors.New("not a cedana checkpoint archive")
	// ErrCorrupt means the archive is damaged: a digest or size mismatch,
	// a truncated file, an invalid manifest, an undecodable entry.
	ErrCorrupt = errors.New("checkpoint archive is corrupt")
	// ErrUnsupportedVersion means the archive's format version is outside
	// MinReadableVersion..FormatVersion. See VersionError.
	ErrUnsupportedVersion = errors.New("unsupported checkpoint format version")
	// ErrTooLarge means the archive exceeds a Limits value, or does not
	// fit in the free space of the extraction directory.
	ErrTooLarge = errors.New("checkpoint archive exceeds a size limit")
	// ErrUnsafeEntry means an entry could escape the extraction directory
	// or is not a plain file: a path escape, a symlink, directory or device
	// entry, a duplicate, or a name outside the format's rules.
	ErrUnsafeEntry = errors.New("unsafe entry in checkpoint archive")
)

// EntryError reports a problem with one entry of an archive. Err wraps one
// of the sentinel errors (or an I/O error while extracting).
type EntryError struct {
	// Entry is the entry's name inside the archive, e.g. "images/pages-1.img".
	Entry string
	// Err is the underlying error.
	Err error
}

// Error implements error.
func (e *EntryError) Error() string { return fmt.Sprintf("entry %q: %v", e.Entry, e.Err) }

// Unwrap returns the underlying error.
func (e *EntryError) Unwrap() error { return e.Err }

// entryErr wraps a sentinel with a message and names the entry.
func entryErr(entry string, sentinel error, format string, args ...any) error {
	return &EntryError{Entry: entry, Err: fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)}
}

// VersionError is returned when an archive's format version cannot be read
// by this build. It wraps ErrUnsupportedVersion.
type VersionError struct {
	// Version is the archive's format version.
	Version int
	// Min and Max are the versions this build can read
	// (MinReadableVersion and FormatVersion).
	Min, Max int
}

// Error implements error. It tells the user which side is too old.
func (e *VersionError) Error() string {
	if e.Version > e.Max {
		return fmt.Sprintf("%v: the archive has format version %d but this cedana reads versions %d to %d: upgrade cedana to restore it",
			ErrUnsupportedVersion, e.Version, e.Min, e.Max)
	}
	return fmt.Sprintf("%v: the archive has format version %d, older than the oldest this cedana reads (%d; newest %d): restore it with an older cedana",
		ErrUnsupportedVersion, e.Version, e.Min, e.Max)
}

// Unwrap returns ErrUnsupportedVersion.
func (e *VersionError) Unwrap() error { return ErrUnsupportedVersion }
