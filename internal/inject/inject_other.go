//go:build linux && !amd64

package inject

import "golang.org/x/sys/unix"

func runSyscall(pid int, nr uintptr, mem []byte, a0, a1 uintptr) (int64, error) {
	return 0, ErrUnsupported
}

func flockBytes(lk *unix.Flock_t) []byte { return nil }
