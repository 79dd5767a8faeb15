package checkpoint

import "testing"

// TestMapsLineHugeTLB: a file mapped from a hugetlbfs mounted on a path
// with a space is recognised (maps prints the space as is; mountinfo
// escapes it as \040, which proc.MountPoints undoes).
func TestMapsLineHugeTLB(t *testing.T) {
	mounts := []string{"/dev/hugepages", "/mnt/huge pages"}
	for line, want := range map[string]bool{
		"7f0000000000-7f0000200000 rw-s 00000000 00:2a 1234                       /mnt/huge pages/buf":        true,
		"7f0000000000-7f0000200000 rw-s 00000000 00:2a 1234                       /dev/hugepages/x (deleted)": true,
		"7f0000000000-7f0000200000 rw-s 00000000 00:0f 99                         /anon_hugepage (deleted)":   true,
		"7f0000000000-7f0000200000 rw-s 00000000 00:2a 1234                       /mnt/huge\\040pages/buf":    false,
		"7f0000000000-7f0000200000 rw-p 00000000 08:01 5678                       /mnt/huge/other":            false,
		"7f0000000000-7f0000200000 rw-p 00000000 00:00 0 ":                                                    false,
		"7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]":                    false,
	} {
		if got := mapsLineHugeTLB(line, mounts); got != want {
			t.Errorf("mapsLineHugeTLB(%q) = %v, want %v", line, got, want)
		}
	}
}
