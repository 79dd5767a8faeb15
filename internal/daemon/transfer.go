package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Streaming an archive from the source to the target over NATS, the
// default way a migration moves it (cluster.transfer = stream): the source
// answers reads of the archive on a subject known only to the target of
// this migration, cedana.node.<source>.blob.<random>, each request an
// offset and each reply up to blobChunk bytes; the target keeps
// blobWindow requests in flight and writes each reply at its offset. No
// copy lands in JetStream, so nothing is written twice; the target checks
// the whole file's SHA-256 (and the restore every entry's digest).

const (
	// blobChunk stays under NATS's default max_payload (1 MiB).
	blobChunk = 512 << 10
	// blobWindow is how many chunk requests the target has in flight.
	blobWindow = 8
	// blobErrHeader carries a read error in a reply.
	blobErrHeader = "Cedana-Error"
)

// serveBlob serves the file at path on a fresh subject until stop.
func (c *clusterNode) serveBlob(path string) (subject string, stop func(), err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", nil, err
	}
	subject = "cedana.node." + c.node.Name() + ".blob." + randomToken()
	pool := sync.Pool{New: func() any { b := make([]byte, blobChunk); return &b }}
	sub, err := c.node.BulkConn().Subscribe(subject, func(m *nats.Msg) {
		reply := nats.NewMsg(m.Reply)
		off, err := strconv.ParseInt(string(m.Data), 10, 64)
		if err == nil && off < 0 {
			err = errors.New("negative offset")
		}
		bp := pool.Get().(*[]byte)
		defer pool.Put(bp)
		var n int
		if err == nil {
			n, err = f.ReadAt(*bp, off)
			if errors.Is(err, io.EOF) {
				err = nil
			}
		}
		if err != nil {
			reply.Header.Set(blobErrHeader, err.Error())
		} else {
			reply.Data = (*bp)[:n]
		}
		_ = m.RespondMsg(reply)
	})
	if err != nil {
		f.Close()
		return "", nil, fmt.Errorf("serve the archive: %w", err)
	}
	if err := c.node.BulkConn().Flush(); err != nil {
		sub.Unsubscribe()
		f.Close()
		return "", nil, fmt.Errorf("serve the archive: %w", err)
	}
	return subject, func() { _ = sub.Unsubscribe(); f.Close() }, nil
}

// fetchBlob reads size bytes from subject into f.
func (c *clusterNode) fetchBlob(ctx context.Context, subject string, size int64, f *os.File) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	offsets := make(chan int64)
	errc := make(chan error, blobWindow)
	var wg sync.WaitGroup
	for range blobWindow {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := range offsets {
				rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
				m, err := c.node.BulkConn().RequestWithContext(rctx, subject, []byte(strconv.FormatInt(off, 10)))
				rcancel()
				if err == nil && m.Header.Get(blobErrHeader) != "" {
					err = errors.New("the source could not read its archive: " + m.Header.Get(blobErrHeader))
				}
				want := min(int64(blobChunk), size-off)
				if err == nil && int64(len(m.Data)) != want {
					err = fmt.Errorf("short chunk at %d: %d bytes, want %d", off, len(m.Data), want)
				}
				if err == nil {
					_, err = f.WriteAt(m.Data, off)
				}
				if err != nil {
					errc <- fmt.Errorf("fetch the archive from the source: %w", err)
					cancel()
					return
				}
			}
		}()
	}
feed:
	for off := int64(0); off < size; off += blobChunk {
		select {
		case offsets <- off:
		case <-ctx.Done():
			break feed
		}
	}
	close(offsets)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	return ctx.Err()
}
