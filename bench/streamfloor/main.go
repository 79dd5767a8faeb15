// Command streamfloor restores a directory of CRIU images through
// `criu restore --stream`, with an image source that does nothing but
// splice each image file into CRIU's pipe. scripts/bench.sh uses it to
// measure what CRIU's stream mode itself costs, apart from anything
// cedana's archive does: the floor under a streamed restore.
//
//	streamfloor IMAGES_DIR WORK_DIR
//
// It prints the restored PID.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cedana/cedana/internal/criu"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: streamfloor IMAGES_DIR WORK_DIR")
		os.Exit(2)
	}
	work := os.Args[2]
	sock := filepath.Join(work, "sock")
	if err := os.MkdirAll(sock, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	res, err := criu.New("").RestoreStreamed(criu.RestoreOptions{
		ImagesDir: sock, LogDir: work, LogFile: "streamfloor-restore.log",
		NetworkLock: criu.NetworkLockSkip,
	}, files(os.Args[1]))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(res.PID)
}

// files serves the image files of a directory.
type files string

func (d files) Has(name string) bool {
	fi, err := os.Stat(filepath.Join(string(d), name))
	return err == nil && fi.Mode().IsRegular()
}

func (d files) WriteImage(name string, pipe *os.File) error {
	f, err := os.Open(filepath.Join(string(d), name))
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		n, err := unix.Splice(int(f.Fd()), nil, int(pipe.Fd()), nil, 1<<20, unix.SPLICE_F_MOVE)
		switch {
		case err == unix.EINTR:
		case err != nil:
			return err
		case n == 0:
			return nil
		}
	}
}
