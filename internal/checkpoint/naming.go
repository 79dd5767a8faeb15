package checkpoint

import (
	"strconv"
	"strings"
	"time"
)

// maxNameLen bounds the process-name part of an archive name.
const maxNameLen = 64

// timeLayout is the archive name's timestamp: UTC, sortable, no colons.
const timeLayout = "2006-01-02T15-04-05.000Z"

// SanitizeName keeps letters, digits, '.', '_' and '-' of a process name,
// replacing anything else with '_'. An empty result becomes "process".
func SanitizeName(name string) string {
	var b strings.Builder
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == '.':
			b.WriteRune(r)
		default:
			b.WriteRune('_')
		}
		if b.Len() >= maxNameLen {
			break
		}
	}
	// No leading dots (no hidden files, no ".."), no underscores at the ends.
	s := strings.TrimRight(strings.TrimLeft(b.String(), "._"), "_")
	if s == "" {
		return "process"
	}
	return s
}

// ArchiveName returns "<name>_<timestamp>.zip" for the n-th attempt
// (n > 0 adds "-n" before the extension so that two dumps in the same
// millisecond never collide).
func ArchiveName(name string, t time.Time, n int) string {
	base := SanitizeName(name) + "_" + t.UTC().Format(timeLayout)
	if n > 0 {
		base += "-" + strconv.Itoa(n)
	}
	return base + ".zip"
}
