package checkpoint

import (
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/fault"
)

// The engine's streaming, for dumps and restores whose CRIU another
// program runs (runc, through criu's swrk bridge): the same decisions,
// the same image collector and the same archive image source as a
// process's, exported rather than copied.

// StreamsMemory reports whether a dump of a tree with rss bytes resident
// streams its memory (streaming on, and at least streamMinBytes).
func (s *Service) StreamsMemory(rss int64) bool { return s.set.Stream && rss >= streamMinBytes }

// StreamsRestore reports whether the restore of m streams its memory, as
// a process restore decides.
func (s *Service) StreamsRestore(m *archive.Manifest) bool {
	return s.set.Stream && m.Options.Streamable && pagesSize(m) >= streamMinBytes
}

// StreamableTree is the manifest's Options.Streamable for a tree of rss
// bytes: restores may stream its memory.
func StreamableTree(procs []archive.Process, rss int64) bool {
	return rss >= streamMinBytes && streamable(procs)
}

// ImageCollector receives the images of a streamed dump: the memory
// pages go into the archive as they arrive, the others into a directory.
type ImageCollector struct{ c *imageCollector }

// NewImageCollector collects into w, staging small images in dir.
func NewImageCollector(w *archive.Writer, dir string, f fault.Injector) *ImageCollector {
	return &ImageCollector{c: newImageCollector(w, dir, f)}
}

// Sink is CRIU's image sink (see criu.ServeDumpImages).
func (c *ImageCollector) Sink(name string, r io.Reader) error { return c.c.sink(name, r) }

// FinishDir adds to the archive, in name order, every regular file of
// the directory: the staged images and whatever else the runtime wrote
// there (runc's descriptors.json; every image when CRIU did not stream).
func (c *ImageCollector) FinishDir() error {
	ents, err := os.ReadDir(c.c.dir)
	if err != nil {
		return err
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	for _, name := range names {
		if err := c.c.w.AddImageFile(name, filepath.Join(c.c.dir, name)); err != nil {
			return err
		}
	}
	return nil
}

// ArchiveImages serves a streamed restore: the pages from r, verified
// while they stream, the other images from dir, where they were
// extracted.
func ArchiveImages(r *archive.Reader, dir string) criu.ImageSource {
	return &archiveImages{r: r, dir: dir}
}
