package checkpoint

import (
	"strings"
	"testing"
	"time"
)

func TestSanitizeName(t *testing.T) {
	cases := map[string]string{
		"redis-server":           "redis-server",
		"python3.11":             "python3.11",
		"../../etc/passwd":       "etc_passwd",
		"":                       "process",
		"...":                    "process",
		"my job: 1/2":            "my_job__1_2",
		"ünïcode":                "n_code",
		strings.Repeat("a", 200): strings.Repeat("a", maxNameLen),
	}
	for in, want := range cases {
		if got := SanitizeName(in); got != want {
			t.Errorf("SanitizeName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestArchiveNameSortsAndNeverCollides(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 14, 50, 5, 123e6, time.UTC)
	a := ArchiveName("bash", t0, 0)
	if a != "bash_2026-11-29T14-50-05.123Z.zip" {
		t.Errorf("name %q", a)
	}
	if b := ArchiveName("bash", t0, 1); b == a {
		t.Error("retry name equals the first")
	}
	if later := ArchiveName("bash", t0.Add(time.Second), 0); later <= a {
		t.Errorf("%q does not sort after %q", later, a)
	}
}
