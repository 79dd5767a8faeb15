package archive

import "sync"

// maxCachedBuf is the largest buffer writeScratch keeps: enough for the
// entries of an idle process's checkpoint, small enough not to pin much
// memory once a large archive has been written.
const maxCachedBuf = 1 << 20

// writeScratch holds the buffers that writeArchive sizes to small entries,
// so that they are reused across archives rather than allocated for each
// (a daemon checkpointing idle processes writes several small archives a
// second).
type writeScratch struct {
	read   []byte // pipeline.small
	frame  []byte // frameWriter.cur
	packed []byte // frameWriter.out
	sink   []byte // fileSink's buffer for archives smaller than a chunk
}

// scratchPool is a package-level cache of *writeScratch. It holds no
// semantic state: whoever takes a scratch overwrites its buffers before
// reading them, and its output buffer is reset to the new file.
var scratchPool sync.Pool

// getScratch returns a cached scratch, or a new one.
func getScratch() *writeScratch {
	if s, ok := scratchPool.Get().(*writeScratch); ok {
		return s
	}
	return &writeScratch{sink: make([]byte, 0, 128<<10)}
}

// putScratch caches s with the buffers left by an archive's pipeline and
// frame writer, keeping those small enough.
func putScratch(s *writeScratch, p *pipeline, fw *frameWriter, sink archiveSink) {
	keep := func(b []byte) []byte {
		if cap(b) > maxCachedBuf {
			return nil
		}
		return b[:0]
	}
	s.read, s.frame, s.packed = keep(p.small), keep(fw.cur), keep(fw.out)
	if fs, ok := sink.(*fileSink); ok {
		s.sink = keep(fs.small)
	} else if s.sink == nil {
		s.sink = make([]byte, 0, 128<<10)
	}
	scratchPool.Put(s)
}
