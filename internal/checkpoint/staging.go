package checkpoint

import (
	"fmt"
	"os"
	"syscall"
)

// shm is the tmpfs used for staging when it has room.
const shm = "/dev/shm"

// stagingDir creates a private directory for images. need is the expected
// size of the images. It prefers the configured dir, then /dev/shm when it
// has room for need plus a margin, then fallback (the archive's directory,
// so that the images never compete for memory).
func (s *Service) stagingDir(fallback string, need int64) (string, error) {
	parent := s.set.StagingDir
	if parent == "" {
		parent = fallback
		if free, err := freeBytes(shm); err == nil && free > uint64(need)+need64(need) {
			parent = shm
		}
	}
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return "", fmt.Errorf("create staging dir in %s: %w", parent, err)
	}
	dir, err := os.MkdirTemp(parent, ".cedana-staging-")
	if err != nil {
		return "", fmt.Errorf("create staging dir in %s: %w", parent, err)
	}
	return dir, nil
}

// need64 is the safety margin over an estimated size: 10% + 64 MiB.
func need64(n int64) uint64 { return uint64(n/10) + 64<<20 }

func freeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}
