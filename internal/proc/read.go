package proc

import (
	"os"
	"slices"
	"syscall"
)

// Reading /proc without the netpoller.
//
// os.Open makes every file it opens a candidate for Go's netpoller: on
// Linux that is five more system calls per file (O_NONBLOCK set, an
// epoll_ctl that the kernel refuses for regular and most /proc files,
// O_NONBLOCK cleared again), around the openat, read and close that the
// work needs. A daemon checkpointing many jobs reads dozens of /proc files
// per checkpoint, so these helpers open, read and close with plain system
// calls. Errors are *os.PathError wrapping the errno, as os.ReadFile's
// are, so that errors.Is(err, os.ErrNotExist) and syscall.ESRCH still
// match.

// readFile reads the whole file at path (a /proc or /sys file, or any
// other small file).
func readFile(path string) ([]byte, error) {
	fd, err := openRead(path, 0)
	if err != nil {
		return nil, err
	}
	defer syscall.Close(fd)
	buf := make([]byte, 0, 1024)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := syscall.Read(fd, buf[len(buf):cap(buf)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// readDirNames returns the names in the directory at path, without "."
// and "..", sorted (as os.ReadDir sorts them).
func readDirNames(path string) ([]string, error) {
	fd, err := openRead(path, syscall.O_DIRECTORY)
	if err != nil {
		return nil, err
	}
	defer syscall.Close(fd)
	var (
		names []string
		buf   [8192]byte
	)
	for {
		n, err := syscall.ReadDirent(fd, buf[:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "readdirent", Path: path, Err: err}
		}
		if n <= 0 {
			slices.Sort(names)
			return names, nil
		}
		_, _, names = syscall.ParseDirent(buf[:n], -1, names)
	}
}

func openRead(path string, flags int) (int, error) {
	for {
		fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|flags, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return -1, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return fd, nil
	}
}
