package checkpoint

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/proc"
)

// shm is the tmpfs used for staging when it has room.
const shm = "/dev/shm"

// stagingPrefix names staging directories: ".cedana-staging-<owner PID>-<random>".
// The owner's PID lets a later cedana remove what a crashed one left
// behind (it holds process memory) without touching live operations.
const stagingPrefix = ".cedana-staging-"

// StagingDir creates a private directory for images, for process and
// container operations alike. need is the expected size of the images.
// It uses the configured staging directory when there is one; else
// preferred (a runtime's choice, e.g. below Docker's data root) when not
// ""; else /dev/shm when it has room for need plus a margin; else
// fallback (the archive's directory, so that the images never compete
// for memory).
func (s *Service) StagingDir(preferred, fallback string, need int64) (string, error) {
	parent := s.set.StagingDir
	if parent == "" {
		parent = preferred
	}
	if parent == "" {
		parent = fallback
		if free, err := freeBytes(shm); err == nil && free > uint64(need)+need64(need) {
			parent = shm
		}
	}
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return "", fmt.Errorf("create staging dir in %s: %w", parent, err)
	}
	removeStaleStaging(parent)
	dir, err := os.MkdirTemp(parent, stagingPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return "", fmt.Errorf("create staging dir in %s: %w", parent, err)
	}
	return dir, nil
}

// Stage verifies and extracts the entries of r that a restore reads from
// disk into a new staging directory (chosen as StagingDir chooses, from
// preferred and fallback) and returns it; the caller removes it. With
// stream, the memory pages stay in the archive, to be fed to CRIU through
// pipes (ArchiveImages), and their digests are checked from now on, on a
// core of their own, rather than when CRIU asks for them. what names the
// archive in errors.
func (s *Service) Stage(r *archive.Reader, stream bool, preferred, fallback, what string, prog Progress) (string, error) {
	var skip func(string) bool
	need := r.Manifest.TotalSize()
	if stream {
		skip = func(name string) bool { return streamedEntry(r, name) }
		need = 0
		for _, e := range r.Manifest.Entries {
			if skip(e.Name) {
				r.VerifyAhead(e.Name)
			} else {
				need += e.Size
			}
		}
	}
	dir, err := s.StagingDir(preferred, fallback, need)
	if err != nil {
		return "", err
	}
	prog.Start("verifying and extracting", need)
	err = r.Extract(dir, archive.ExtractOptions{Progress: prog.Advance, Concurrency: runtime.NumCPU(), Skip: skip})
	prog.Done()
	if err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("%s: %w (nothing was restored)", what, err)
	}
	return dir, nil
}

// RemoveStaleStaging deletes staging directories left in the usual places
// by cedana processes that no longer run (a crash, kill -9).
func (s *Service) RemoveStaleStaging() {
	for _, dir := range []string{s.set.StagingDir, shm} {
		if dir != "" {
			removeStaleStaging(dir)
		}
	}
}

func removeStaleStaging(parent string) {
	matches, _ := filepath.Glob(filepath.Join(parent, stagingPrefix+"*"))
	for _, m := range matches {
		rest := strings.TrimPrefix(filepath.Base(m), stagingPrefix)
		owner, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(owner)
		if !ok || err != nil || pid <= 0 || proc.Alive(pid) {
			continue // not ours to judge, or its owner still runs
		}
		_ = os.RemoveAll(m)
	}
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
