package proc

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

func TestUnescapeMountField(t *testing.T) {
	for in, want := range map[string]string{
		`/dev/hugepages`:          `/dev/hugepages`,
		`/mnt/huge\040pages`:      `/mnt/huge pages`,
		`/a\011b\012c\134d`:       "/a\tb\nc\\d",
		`/trailing\04`:            `/trailing\04`, // too short: kept
		`/not\09octal`:            `/not\09octal`,
		`/high\777`:               `/high\777`, // not a byte: kept
		`\040lead`:                ` lead`,
		`/two\040\040spaces\040`:  `/two  spaces `,
		`/utf8-\303\251t\303\251`: "/utf8-été",
	} {
		if got := UnescapeMountField(in); got != want {
			t.Errorf("UnescapeMountField(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseMountPoints(t *testing.T) {
	info := `22 1 0:21 / /proc rw,nosuid - proc proc rw
36 35 0:40 / /dev/hugepages rw,relatime shared:27 - hugetlbfs hugetlbfs rw,pagesize=2M
37 35 0:41 / /mnt/huge\040pages rw,relatime shared:28 master:3 - hugetlbfs none rw,pagesize=1G
38 35 0:42 / /mnt/tmp\040fs rw - tmpfs tmpfs rw
garbage line
39 35 0:43 / /no/separator rw hugetlbfs
`
	got := parseMountPoints(info, "hugetlbfs")
	want := []string{"/dev/hugepages", "/mnt/huge pages"}
	if !slices.Equal(got, want) {
		t.Fatalf("hugetlbfs mounts = %q, want %q", got, want)
	}
}

// TestMountPointsOfARealMount mounts a hugetlbfs (no huge pages are needed
// to mount one) on a directory whose name has a space, in a private mount
// namespace, and parses what the kernel itself wrote in mountinfo.
func TestMountPointsOfARealMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: mounting needs root")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("skipping: unshare (util-linux) not installed")
	}
	dir := filepath.Join(t.TempDir(), "huge pages")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(unshare, "--mount", "--propagation", "private", "sh", "-c",
		`mount -t hugetlbfs none "$1" && cat /proc/self/mountinfo`, "sh", dir).CombinedOutput()
	if err != nil {
		t.Skipf("skipping: cannot mount a hugetlbfs here: %v: %s", err, out)
	}
	if got := parseMountPoints(string(out), "hugetlbfs"); !slices.Contains(got, dir) {
		t.Fatalf("hugetlbfs mount %q not found (unescaped) in %q", dir, got)
	}
}
