package proc

import (
	"os"
	"path/filepath"
	"strings"
)

// MountPoints returns the mount points of the filesystems of type fstype
// (e.g. "hugetlbfs") in this process's mount namespace, unescaped: a
// directory named "huge pages" is listed by the kernel as "huge\040pages"
// and returned as "huge pages".
func MountPoints(fstype string) []string {
	data, err := os.ReadFile(filepath.Join(Root, "self", "mountinfo"))
	if err != nil {
		return nil
	}
	return parseMountPoints(string(data), fstype)
}

// parseMountPoints picks the mount points of type fstype from the text of
// a mountinfo file:
//
//	36 35 98:0 /mnt1 /mnt/parent\040dir rw,noatime master:1 - hugetlbfs none rw
//
// The optional fields end at the lone "-"; the type follows it.
func parseMountPoints(mountinfo, fstype string) []string {
	var out []string
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) < 7 {
			continue
		}
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(f) || UnescapeMountField(f[sep+1]) != fstype {
			continue
		}
		out = append(out, UnescapeMountField(f[4]))
	}
	return out
}

// UnescapeMountField undoes the kernel's escaping of a field of
// /proc/*/mountinfo or /proc/*/mounts: space, tab, newline and backslash
// are written as a backslash and three octal digits (\040, \011, \012,
// \134). Anything else, including a backslash not followed by three octal
// digits, is kept as it is.
func UnescapeMountField(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			v := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			if s[i+1] <= '3' { // \400 and above do not fit in a byte
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
