package archive

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	sha, xx := strings.Repeat("ab", 32), strings.Repeat("cd", 16)
	valid := func() *Manifest {
		m := testManifest()
		m.FormatVersion = FormatVersion
		m.Entries = []EntryInfo{
			{Name: "files/0", Size: 3, StoredSHA256: sha, StoredXXH3: xx, StoredCRC32C: "0badf00d"},
			{Name: "images/pages-1.img", Size: 10, StoredSHA256: sha, StoredXXH3: xx, StoredCRC32C: "0badf00d"},
		}
		m.CarriedFiles = []CarriedFile{{Path: "/var/log/a.log", Entry: "files/0", Size: 3}}
		return m
	}
	tests := []struct {
		name string
		edit func(*Manifest)
		want error
	}{
		{"valid", func(*Manifest) {}, nil},
		{"no entries", func(m *Manifest) { m.Entries, m.CarriedFiles = nil, nil }, nil},
		{"future version", func(m *Manifest) { m.FormatVersion = FormatVersion + 1 }, ErrUnsupportedVersion},
		{"negative version", func(m *Manifest) { m.FormatVersion = -1 }, ErrUnsupportedVersion},
		{"other kind", func(m *Manifest) { m.Kind = "container" }, ErrCorrupt},
		{"no root pid", func(m *Manifest) { m.RootPID = 0 }, ErrCorrupt},
		{"no processes", func(m *Manifest) { m.Processes = nil }, ErrCorrupt},
		{"root not first", func(m *Manifest) { m.Processes[0].PID = 7 }, ErrCorrupt},
		{"bad entry name", func(m *Manifest) { m.Entries[1].Name = "images/../x" }, ErrUnsafeEntry},
		{"manifest as entry", func(m *Manifest) { m.Entries[1].Name = ManifestName }, ErrUnsafeEntry},
		{"duplicate entry", func(m *Manifest) { m.Entries = append(m.Entries, m.Entries[1]) }, ErrUnsafeEntry},
		{"negative size", func(m *Manifest) { m.Entries[1].Size = -1 }, ErrCorrupt},
		{"uppercase digest", func(m *Manifest) { m.Entries[1].StoredSHA256 = strings.ToUpper(sha) }, ErrCorrupt},
		{"short digest", func(m *Manifest) { m.Entries[1].StoredSHA256 = "abc" }, ErrCorrupt},
		{"bad stored CRC", func(m *Manifest) { m.Entries[1].StoredCRC32C = "xyz" }, ErrCorrupt},
		{"short xxh3", func(m *Manifest) { m.Entries[1].StoredXXH3 = "abc" }, ErrCorrupt},
		{"uppercase xxh3", func(m *Manifest) { m.Entries[1].StoredXXH3 = strings.ToUpper(xx) }, ErrCorrupt},
		{"format 3 without xxh3", func(m *Manifest) { m.Entries[0].StoredXXH3 = "" }, ErrCorrupt},
		{"xxh3 in format 2", func(m *Manifest) { m.FormatVersion = 2 }, ErrCorrupt},
		{"format 2", func(m *Manifest) {
			m.FormatVersion = 2
			for i := range m.Entries {
				m.Entries[i].StoredXXH3 = ""
			}
		}, nil},
		{"format 1 digest in format 2", func(m *Manifest) { m.Entries[1].SHA256 = sha }, ErrCorrupt},
		{"format 1 without content digest", func(m *Manifest) { m.FormatVersion = 1 }, ErrCorrupt},
		{"format 1", func(m *Manifest) {
			m.FormatVersion = 1
			for i := range m.Entries {
				m.Entries[i].SHA256, m.Entries[i].StoredSHA256, m.Entries[i].StoredXXH3 = sha, "", ""
			}
		}, nil},
		{"relative path", func(m *Manifest) { m.CarriedFiles[0].Path = "var/log/a.log" }, ErrUnsafeEntry},
		{"dotdot path", func(m *Manifest) { m.CarriedFiles[0].Path = "/var/../etc/shadow" }, ErrUnsafeEntry},
		{"trailing slash", func(m *Manifest) { m.CarriedFiles[0].Path = "/var/log/" }, ErrUnsafeEntry},
		{"root path", func(m *Manifest) { m.CarriedFiles[0].Path = "/" }, ErrUnsafeEntry},
		{"NUL in path", func(m *Manifest) { m.CarriedFiles[0].Path = "/a\x00b" }, ErrUnsafeEntry},
		{"duplicate path", func(m *Manifest) {
			m.Entries = append(m.Entries, EntryInfo{Name: "files/1", Size: 3, StoredSHA256: sha, StoredXXH3: xx, StoredCRC32C: "0badf00d"})
			m.CarriedFiles = append(m.CarriedFiles, CarriedFile{Path: "/var/log/a.log", Entry: "files/1", Size: 3})
		}, ErrUnsafeEntry},
		{"entry shared", func(m *Manifest) {
			m.CarriedFiles = append(m.CarriedFiles, CarriedFile{Path: "/b", Entry: "files/0", Size: 3})
		}, ErrUnsafeEntry},
		{"entry not listed", func(m *Manifest) { m.CarriedFiles[0].Entry = "files/9" }, ErrCorrupt},
		{"entry not under files", func(m *Manifest) { m.CarriedFiles[0].Entry = "images/pages-1.img" }, ErrUnsafeEntry},
		{"size differs", func(m *Manifest) { m.CarriedFiles[0].Size = 4 }, ErrCorrupt},
		{"orphan files entry", func(m *Manifest) { m.CarriedFiles = nil }, ErrCorrupt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := valid()
			tc.edit(m)
			wantErr(t, m.Validate(), tc.want)
		})
	}
}

func TestEntryNames(t *testing.T) {
	for name, ok := range map[string]bool{
		"images/pages-1.img":                 true,
		"images/a_b.C-9":                     true,
		"images/.hidden":                     true,
		"files/0":                            true,
		"container/config.json":              true,
		"container/a/b":                      false,
		"container/":                         false,
		"files/123456789":                    true,
		"images/":                            false,
		"images/.":                           false,
		"images/..":                          false,
		"images/a/b":                         false,
		"images/a b":                         false,
		"images/é":                           false,
		"images/" + strings.Repeat("a", 256): false,
		"files/":                             false,
		"files/00":                           false,
		"files/-1":                           false,
		"files/1234567890":                   false,
		"files/x":                            false,
		"other/x":                            false,
		"pages-1.img":                        false,
		"":                                   false,
	} {
		if err := checkEntryName(name); (err == nil) != ok {
			t.Errorf("checkEntryName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

func TestParseManifest(t *testing.T) {
	for _, data := range []string{"", "null", "[]", `{"format_version": "1"}`, `{"format_version": 1}`} {
		if _, err := ParseManifest([]byte(data)); err == nil {
			t.Errorf("ParseManifest(%q) succeeded", data)
		}
	}
}
