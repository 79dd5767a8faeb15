package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cedana/cedana/internal/archive"
)

// A stop-and-copy migration with cluster.transfer = stream pushes the
// archive to the target while the source's dump writes it, instead of
// writing it here and letting the target fetch it afterwards: the job is
// stopped for the dump and the transfer together, not one after the other,
// and the archive never touches the source's disk.
//
//  1. Before the dump, the source opens a tunnel (tunnel.go) whose source
//     end reads the archive stream, and asks the target to receive it
//     (migrate-push). The target opens the tunnel into a new file.
//  2. The dump writes its archive into the tunnel (an archive.Destination):
//     a slow target slows the dump (the tunnel's window), a failed one —
//     disk full, gone — fails it, and the job resumes here.
//  3. Commit waits until the target acknowledged every byte; migrate-in
//     then names the size, and the target restores from the file as from
//     a fetched one (the restore checks every entry's digest).
//
// A target that receives part of an archive and hears nothing more for
// pushSilence (30 s), or whose complete archive no migrate-in claims
// within pushUnclaimed (60 s), removes it; at start it removes any it was
// receiving when it stopped (jobs.Manager.RemovePartialArchives).

// pushSilence is how long an arriving archive may get nothing before the
// target gives up on it, and pushUnclaimed how long a complete one waits
// for its migrate-in (variables for tests).
var (
	pushSilence   = tunnelTimeout
	pushUnclaimed = pendingTimeout
)

// migratePush asks a target to receive a job's archive while it is written.
type migratePush struct {
	From    string `json:"from"`
	Epoch   uint64 `json:"epoch"`
	ID      string `json:"id"`
	Subject string `json:"subject"` // the source's end of the tunnel
	Attempt string `json:"attempt,omitempty"`
}

// pushTo opens the tunnel to node to for job id's archive at epoch and
// returns the destination the dump writes into.
func (c *clusterNode) pushTo(ctx context.Context, to, id string, epoch uint64, attempt string) (archive.Destination, string, error) {
	pr, pw := io.Pipe()
	src := &pipeConn{pr: pr}
	t, err := serveTunnel(c.node.BulkConn(), c.node.Name(), func() (io.ReadWriteCloser, error) { return src, nil })
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(ctx, tunnelTimeout)
	defer cancel()
	req := migratePush{From: c.node.Name(), Epoch: epoch, ID: id, Subject: t.self, Attempt: attempt}
	if err := c.callWatching(ctx, to, "migrate-push", req, nil); err != nil {
		t.stop()
		return nil, "", fmt.Errorf("node %s cannot receive the archive: %w", to, err)
	}
	// A target that dies stops acknowledging; the job must not stay
	// frozen for the tunnel's timeout when the cluster sees it down
	// sooner.
	c.failIfDown(t, to, "while the archive went to it")
	d := &pushDest{t: t, pw: pw, abort: func() { c.abortLater(to, id, attempt) }}
	return d, "streamed to node " + to, nil
}

// failIfDown fails tunnel t when node is seen down before t ends: a node
// that died sends nothing, not even the end of its stream.
func (c *clusterNode) failIfDown(t *tunnel, node, when string) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-t.dead
		cancel()
	}()
	go c.watchNode(ctx, node, func() { t.fail(fmt.Errorf("node %s went down %s", node, when)) })
}

// pushDest is the source's end: the dump's archive goes into the tunnel.
type pushDest struct {
	t     *tunnel
	pw    *io.PipeWriter
	abort func() // tells the target to drop what it received
	once  sync.Once
}

func (d *pushDest) Write(p []byte) (int, error) {
	n, err := d.pw.Write(p)
	if err != nil {
		if terr := d.t.Err(); terr != nil {
			err = terr // why the tunnel ended: the target's disk, say
		}
	}
	return n, err
}

// Commit ends the stream and waits until the target has all of it.
func (d *pushDest) Commit() error {
	if err := d.pw.Close(); err != nil {
		return err
	}
	<-d.t.sendDone
	if err := d.t.Err(); err != nil {
		return err
	}
	if !d.t.sentAll() {
		return errors.New("the tunnel to the target closed before the archive was all acknowledged")
	}
	return nil
}

// Abort ends the tunnel and tells the target to drop the partial archive.
func (d *pushDest) Abort() error {
	d.once.Do(func() {
		_ = d.pw.CloseWithError(errors.New("the archive was aborted"))
		d.t.fail(errors.New("the source aborted the archive"))
		d.abort()
	})
	return nil
}

// pipeConn is the source's connection of the tunnel: it reads the archive
// stream; the target sends nothing back but its end of stream.
type pipeConn struct{ pr *io.PipeReader }

func (p *pipeConn) Read(b []byte) (int, error) { return p.pr.Read(b) }
func (p *pipeConn) Write(b []byte) (int, error) {
	return 0, errors.New("the target sent data on an archive's tunnel")
}
func (p *pipeConn) CloseWrite() error { return nil }
func (p *pipeConn) Close() error {
	return p.pr.CloseWithError(errors.New("the tunnel to the target closed"))
}

// pushIn is an archive arriving on the target: the tunnel's connection
// writes into the file tmp.
type pushIn struct {
	from    string
	epoch   uint64
	attempt string // migratePush.Attempt
	dir     string
	tmp     string
	f       io.WriteCloser
	t       *tunnel

	mu   sync.Mutex
	n    int64 // bytes written
	last time.Time
	done chan struct{} // closed by finish
	err  error         // set before done is closed
}

func (p *pushIn) Read([]byte) (int, error) { return 0, io.EOF } // nothing to send back

func (p *pushIn) Write(b []byte) (int, error) {
	n, err := p.f.Write(b)
	p.mu.Lock()
	p.n += int64(n)
	p.last = time.Now()
	p.mu.Unlock()
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		err = fmt.Errorf("not enough space in %s for the archive: %w", p.dir, err)
	}
	return n, err
}

// CloseWrite is the source's end of stream: the archive is complete.
func (p *pushIn) CloseWrite() error {
	p.finish(nil)
	return nil
}

// Close ends the connection; before the end of stream, the archive is
// incomplete.
func (p *pushIn) Close() error {
	p.finish(errors.New("the tunnel from the source closed before the whole archive arrived"))
	return nil
}

// finish records the outcome once; a failed archive is removed at once.
func (p *pushIn) finish(err error) {
	p.mu.Lock()
	select {
	case <-p.done:
		p.mu.Unlock()
		return
	default:
	}
	p.err = err
	close(p.done)
	p.mu.Unlock()
	_ = p.f.Close()
	if err != nil {
		_ = os.Remove(p.tmp)
	}
}

// handleMigratePush is the target's step 1: open the tunnel into a new
// file.
func (c *clusterNode) handleMigratePush(ctx context.Context, raw json.RawMessage) (any, error) {
	var r migratePush
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, status.Error(codes.InvalidArgument, "unreadable request: "+err.Error())
	}
	dir, err := c.arrivalDir(ctx, r.ID, r.ID, r.From, r.Epoch)
	if err != nil {
		return nil, err
	}
	tmp := filepath.Join(dir, fmt.Sprintf("migrated-from-%s-%d.cedana.part", r.From, r.Epoch))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		_ = os.Remove(dir) // only if empty
		return nil, fmt.Errorf("receive the archive into %s: %w", dir, err)
	}
	p := &pushIn{from: r.From, epoch: r.Epoch, attempt: r.Attempt, dir: dir, tmp: tmp, f: f, last: time.Now(), done: make(chan struct{})}
	c.mu.Lock()
	if old := c.pushes[r.ID]; old != nil {
		c.mu.Unlock()
		f.Close()
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("an archive of job %s is already arriving here (from %s, epoch %d)", r.ID, old.from, old.epoch)
	}
	if c.pushes == nil {
		c.pushes = map[string]*pushIn{}
	}
	c.pushes[r.ID] = p
	c.mu.Unlock()
	if p.t, err = dialTunnel(c.node.BulkConn(), c.node.Name(), r.Subject, p); err != nil {
		c.dropPush(r.ID, p)
		return nil, err
	}
	go c.watchPush(r.ID, p)
	return struct{}{}, nil
}

// watchPush ends an arriving archive whose source went silent, and forgets
// one that no migrate-in claimed.
func (c *clusterNode) watchPush(id string, p *pushIn) {
	tick := time.NewTicker(min(time.Second, pushSilence/4))
	defer tick.Stop()
	for {
		select {
		case <-p.done:
			p.mu.Lock()
			failed := p.err != nil
			p.mu.Unlock()
			if failed {
				c.dropPush(id, p)
				return
			}
			// Complete: migrate-in takes it, or nobody does.
			time.AfterFunc(pushUnclaimed, func() { c.dropPush(id, p) })
			return
		case <-tick.C:
			p.mu.Lock()
			silent := time.Since(p.last)
			p.mu.Unlock()
			if silent > pushSilence {
				err := fmt.Errorf("nothing arrived from the source for %v", pushSilence)
				p.finish(err) // the reason, before the tunnel's closing gives its own
				p.t.fail(err)
			}
		}
	}
}

// dropPush forgets job id's arriving archive p (if it is still the one
// recorded) and removes its file.
func (c *clusterNode) dropPush(id string, p *pushIn) {
	c.mu.Lock()
	if c.pushes[id] == p {
		delete(c.pushes, id)
	} else {
		p = nil // taken by migrate-in, or dropped already
	}
	c.mu.Unlock()
	if p == nil {
		return
	}
	if p.t != nil {
		p.t.stop()
	}
	p.finish(errors.New("dropped"))
	_ = os.Remove(p.tmp)
	_ = os.Remove(p.dir) // only if empty
}

// receivePushed is the target's step 3 for a pushed archive: it waits
// until the archive has all arrived, checks its size and gives it its
// final name.
func (c *clusterNode) receivePushed(ctx context.Context, in migrateIn) (string, error) {
	c.mu.Lock()
	p := c.pushes[in.ID]
	if p != nil && p.from == in.From && p.epoch == in.Epoch {
		delete(c.pushes, in.ID) // this migrate-in owns it now
	} else {
		p = nil
	}
	c.mu.Unlock()
	if p == nil {
		return "", fmt.Errorf("no archive of job %s arrived here from %s at epoch %d", in.Name, in.From, in.Epoch)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		p.t.stop()
		_ = os.Remove(p.tmp)
		return "", ctx.Err()
	}
	p.t.stop()
	p.mu.Lock()
	n, err := p.n, p.err
	p.mu.Unlock()
	if err == nil && n != in.Size {
		err = fmt.Errorf("the archive arrived with %d bytes, the source wrote %d", n, in.Size)
	}
	path := filepath.Join(p.dir, fmt.Sprintf("migrated-from-%s-%d.cedana", in.From, in.Epoch))
	if err == nil {
		err = os.Rename(p.tmp, path)
	}
	if err != nil {
		_ = os.Remove(p.tmp)
		return "", fmt.Errorf("receive the archive into %s: %w", p.dir, err)
	}
	return path, nil
}
