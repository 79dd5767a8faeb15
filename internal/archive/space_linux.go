package archive

import "syscall"

// freeSpace returns the bytes available to an unprivileged user on the
// filesystem holding dir.
func freeSpace(dir string) (avail int64, ok bool, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false, err
	}
	return int64(st.Bavail) * int64(st.Bsize), true, nil
}
