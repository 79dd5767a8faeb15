package checkpoint

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/proc"
)

// streamable reports whether the restore of a dump of this tree may read
// its images from a pipe. CRIU re-reads the pages of hugetlb mappings at
// offsets, which a pipe cannot do.
func streamable(procs []archive.Process) bool {
	mounts := hugetlbMounts()
	for _, p := range procs {
		if usesHugeTLB(p.PID, mounts) {
			return false
		}
	}
	return true
}

// usesHugeTLB reports whether pid maps hugetlb memory (anonymous
// MAP_HUGETLB, or a file on one of the hugetlbfs mounts), from
// /proc/PID/maps.
func usesHugeTLB(pid int, mounts []string) bool {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if mapsLineHugeTLB(sc.Text(), mounts) {
			return true
		}
	}
	return false
}

// mapsLineHugeTLB reports whether a line of /proc/PID/maps maps hugetlb
// memory. The path in a maps line is not escaped (a space is a space),
// so mounts must be unescaped paths.
func mapsLineHugeTLB(line string, mounts []string) bool {
	if strings.Contains(line, "/anon_hugepage") {
		return true
	}
	i := strings.Index(line, " /")
	if i < 0 {
		return false // an anonymous mapping
	}
	for _, m := range mounts {
		if strings.HasPrefix(line[i+1:], m+"/") {
			return true
		}
	}
	return false
}

// hugetlbMounts lists the mount points of hugetlbfs filesystems,
// unescaped (mountinfo writes a space as \040, /proc/PID/maps does not).
func hugetlbMounts() []string {
	return proc.MountPoints("hugetlbfs")
}
