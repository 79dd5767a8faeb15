package checkpoint

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/fault"
)

// Streaming: CRIU hands its images to Cedana through pipes (criu
// --stream) instead of files. On a dump, the memory pages go straight
// from CRIU into the archive, compressed and digested on the way, while
// the tree is frozen; on a restore they go straight from the archive into
// CRIU, decoded and verified on the way. Either way nothing is copied
// through the disk or /dev/shm, and the archive work overlaps CRIU's.
// The other images are small; they go through the staging directory as
// before (a restore verifies them completely before CRIU starts).

// streamMinBytes is the resident memory from which dumps and restores
// stream: below it the pipes, the image server and the staging of the
// small images cost more than staging everything (a daemon checkpointing
// a hundred idle jobs spent 60 % more CPU streaming them).
const streamMinBytes = 64 << 20

// isPagesImage reports whether name is a memory pages image, the images
// worth streaming (pages-N.img; pagemap-N.img is their small index).
func isPagesImage(name string) bool {
	return strings.HasPrefix(name, "pages-") && strings.HasSuffix(name, ".img")
}

// pagesWait is how long a pages image waits for the archive writer while
// another one is being written before it goes to the staging directory
// instead. CRIU writes pages images one after another, so the wait is
// normally the few milliseconds the previous image needs to be closed.
const pagesWait = 200 * time.Millisecond

// imageCollector receives the images of a streamed dump: pages images go
// into the archive as they arrive (one at a time: a zip is written
// sequentially), the others into dir, to be added once CRIU is done.
type imageCollector struct {
	w     *archive.Writer
	dir   string
	slot  chan struct{} // held while an image streams into w
	fault fault.Injector

	mu     sync.Mutex
	staged []string
}

func newImageCollector(w *archive.Writer, dir string, f fault.Injector) *imageCollector {
	return &imageCollector{w: w, dir: dir, slot: make(chan struct{}, 1), fault: f}
}

// sink is CRIU's image sink (see criu.Client.DumpStreamed).
func (c *imageCollector) sink(name string, r io.Reader) error {
	step := fault.SinkImage
	if isPagesImage(name) {
		step = fault.SinkPages
	}
	if err := c.fault.At(step); err != nil {
		return err
	}
	if isPagesImage(name) {
		t := time.NewTimer(pagesWait)
		select {
		case c.slot <- struct{}{}:
			t.Stop()
			defer func() { <-c.slot }()
			return c.w.AddImage(name, r, -1)
		case <-t.C:
		}
	}
	f, err := os.OpenFile(filepath.Join(c.dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 64<<10)
	_, err = io.Copy(bw, r)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("stage image %s: %w", name, err)
	}
	c.mu.Lock()
	c.staged = append(c.staged, name)
	c.mu.Unlock()
	return nil
}

// finish adds the staged images to the archive, in name order.
func (c *imageCollector) finish() error {
	c.mu.Lock()
	names := slices.Clone(c.staged)
	c.mu.Unlock()
	slices.Sort(names)
	for _, name := range names {
		if err := c.w.AddImageFile(name, filepath.Join(c.dir, name)); err != nil {
			return err
		}
	}
	return nil
}

// archiveImages serves a streamed restore: pages images from the archive
// (verified while they stream, see archive.Reader.StreamEntry), the other
// images from dir, where they were extracted and verified before CRIU
// started.
type archiveImages struct {
	r   *archive.Reader
	dir string
}

// streamedEntry reports whether an archive entry is served to CRIU
// straight from the archive rather than extracted first.
func streamedEntry(r *archive.Reader, entry string) bool {
	name, ok := strings.CutPrefix(entry, archive.ImagesPrefix)
	return ok && isPagesImage(name) && r.Streamable(entry)
}

func (a *archiveImages) Has(name string) bool {
	if streamedEntry(a.r, archive.ImagesPrefix+name) {
		return true
	}
	fi, err := os.Lstat(filepath.Join(a.dir, name))
	return err == nil && fi.Mode().IsRegular()
}

func (a *archiveImages) WriteImage(name string, pipe *os.File) error {
	if streamedEntry(a.r, archive.ImagesPrefix+name) {
		return a.r.StreamEntry(archive.ImagesPrefix+name, pipe)
	}
	f, err := os.OpenFile(filepath.Join(a.dir, name), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(pipe, f)
	if errors.Is(err, syscall.EPIPE) {
		// CRIU stops reading an image once it has what it needs.
		return nil
	}
	return err
}
