package storage

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapRing returns size bytes of shared memory mapped twice in a row
// (2*size bytes, the second half the same pages as the first), outside the
// Go heap. size must be a multiple of the page size. unmapRing releases it.
func mapRing(size int) ([]byte, error) {
	fd, err := unix.MemfdCreate("cedana-ring", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	defer unix.Close(fd) // the mappings keep the memory
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return nil, fmt.Errorf("ftruncate: %w", err)
	}
	// Reserve 2*size of address space, then map the memory over both
	// halves.
	mem, err := unix.Mmap(-1, 0, 2*size, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap: %w", err)
	}
	for half := range 2 {
		addr := unsafe.Pointer(&mem[half*size])
		got, err := unix.MmapPtr(fd, 0, addr, uintptr(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED)
		if err == nil && got != addr {
			err = fmt.Errorf("mapped at %p, not %p", got, addr)
		}
		if err != nil {
			_ = unix.Munmap(mem)
			return nil, fmt.Errorf("mmap: %w", err)
		}
	}
	return mem, nil
}

// unmapRing releases memory from mapRing. A pipe that pages were
// vmspliced into keeps its own references to them, unchanged.
func unmapRing(mem []byte) { _ = unix.Munmap(mem) }
