package criu

import (
	"strings"
	"testing"
)

func TestMigrationModes(t *testing.T) {
	cases := []struct {
		name           string
		memTrack, lazy bool
		pipeMax        int
		want, wantNot  []string
	}{
		{"nothing optional", false, false, 1 << 20,
			[]string{"possible: stop-and-copy;", "no userfaultfd", "no pre-copy"}, []string{", lazy (post-copy)"}},
		{"lazy, small pipes", false, true, 1 << 20,
			[]string{"lazy (post-copy) on this machine only", "fs.pipe-max-size ≥ 4194304 (now 1048576)"}, []string{"iterative pre-copy"}},
		{"everything", true, true, 4 << 20,
			[]string{"stop-and-copy, iterative pre-copy, lazy (post-copy)"}, []string{"on this machine only", "no pre-copy"}},
	}
	for _, c := range cases {
		got := migrationModes(c.memTrack, c.lazy, c.pipeMax)
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %q lacks %q", c.name, got, w)
			}
		}
		for _, w := range c.wantNot {
			if strings.Contains(got, w) && !(c.name == "lazy, small pipes" && hasCapSysResource()) {
				t.Errorf("%s: %q should not say %q", c.name, got, w)
			}
		}
	}
}
