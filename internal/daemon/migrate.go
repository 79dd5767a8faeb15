package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cedana/cedana/api/cedana/v1"
	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/cluster"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/fault"
	"github.com/cedana/cedana/internal/jobs"
	"github.com/cedana/cedana/internal/store"
)

// Stop-and-copy migration, coordinated by the job's owner (the source),
// rule 7 of docs/cluster.md:
//
//  1. the source checkpoints the job keeping its tree stopped;
//  2. it puts the archive in the cluster's object store (ArchivesBucket)
//     with its SHA-256;
//  3. the target (migrate-in) fetches it, checks size and digest, and
//     restores the job left stopped;
//  4. the source moves the job's record to the target by compare-and-set
//     under its epoch (cluster.Jobs.Hand) — the commit point;
//  5. the target (migrate-resume) resumes its copy, but only while the
//     record names it owner at that epoch, and confirms it runs;
//  6. the source kills its stopped copy and forgets the job.
//
// Any failure before 4 removes the target's stopped copy (migrate-abort)
// and resumes the source. A target whose resume or abort never arrives
// settles by itself after pendingTimeout, from the record: resume if it
// owns the job, discard otherwise. At no moment do two copies run.

// errMigrationFailed marks a migration that did not happen: the job still
// runs on its node.
var errMigrationFailed = errors.New("migration failed")

// pendingTimeout is how long an imported, stopped copy waits for the
// source's resume or abort before it settles from the record.
const pendingTimeout = 60 * time.Second

// resumeSettle is the longest a target waits to see a resumed copy run
// (jobs.Manager.Resume: usually about 50 ms).
const resumeSettle = 300 * time.Millisecond

// migrateIn asks a target to take a job.
type migrateIn struct {
	From   string       `json:"from"`
	Epoch  uint64       `json:"epoch"`
	ID     string       `json:"id"`
	Name   string       `json:"name"`
	Cmd    []string     `json:"cmd,omitempty"`
	Dir    string       `json:"dir,omitempty"`
	Log    string       `json:"log_path,omitempty"`
	Policy store.Policy `json:"policy"`
	// Runtime and Container are a container job's runtime and its
	// container ID on the source; the target restores it under
	// jobs.MigratedContainerID.
	Runtime   string `json:"runtime,omitempty"`
	Container string `json:"container,omitempty"`
	// Blob is the subject the source serves the archive on (stream), or
	// Key its object in ArchivesBucket (object-store).
	Blob string `json:"blob,omitempty"`
	Key  string `json:"key,omitempty"`
	// Pages, in a lazy migration, is the subject of the source's tunnel
	// to its page server (tunnel.go): the archive holds no memory.
	Pages string `json:"pages,omitempty"`
	// Pushed: the archive reached the target while it was written
	// (push.go).
	Pushed bool `json:"pushed,omitempty"`
	// Attempt names this migration attempt (migrateAbort).
	Attempt string `json:"attempt,omitempty"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256"`
	// History is the job's events on the source (the newest
	// maxHistory), which the target keeps before its own.
	History []store.Event `json:"history,omitempty"`
}

// maxHistory bounds the events a migration carries.
const maxHistory = 1000

type migrateInReply struct {
	PID int `json:"pid"`
}

type migrateResume struct {
	ID    string `json:"id"`
	Epoch uint64 `json:"epoch"`
}

type migrateResumeReply struct {
	PID int `json:"pid"`
	// ResumedAfterMS is how long after the request the copy was resumed.
	ResumedAfterMS int64 `json:"resumed_after_ms"`
}

type migrateAbort struct {
	ID string `json:"id"`
	// Attempt, when set, limits the abort to what that attempt brought
	// (migrateIn.Attempt, migratePush.Attempt): an abort that arrives
	// late never drops what a migration retried meanwhile brought.
	Attempt string `json:"attempt,omitempty"`
}

type pendingImport struct {
	epoch   uint64
	attempt string
	timer   *time.Timer
	// lazyErr: the memory of a lazily imported copy stopped arriving
	// (its tree was killed): it must not be resumed (lazy.go).
	lazyErr error
}

// migrate is Migrate in cluster mode.
func (c *clusterNode) migrate(ctx context.Context, r *pb.MigrateRequest) (*pb.MigrateResponse, error) {
	start := time.Now()
	self, to := c.node.Name(), r.GetTo()
	if to == "" {
		return nil, status.Error(codes.InvalidArgument, "migrate: which node? (--to NODE)")
	}
	j, err := c.m.Get(ctx, r.GetJob())
	if errors.Is(err, store.ErrNotFound) {
		// Not here: ask its owner, which runs this same method.
		rec, oerr := c.owner(ctx, r.GetJob())
		if oerr != nil {
			return nil, oerr
		}
		if rec.Owner == self {
			return nil, err
		}
		// Forwarded to the owner, watched: an owner that dies meanwhile
		// never answers.
		wctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		go c.watchNode(wctx, rec.Owner, func() { cancel(fmt.Errorf("node %s, which runs the job, went down during the migration", rec.Owner)) })
		var out pb.MigrateResponse
		if err := c.callUnary(wctx, rec.Owner, "migrate", r, &out); err != nil {
			if cause := context.Cause(wctx); cause != nil && !errors.Is(cause, context.Canceled) {
				return nil, cause
			}
			return nil, err
		}
		return &out, nil
	}
	if err != nil {
		return nil, err
	}
	if to == self {
		return nil, status.Errorf(codes.InvalidArgument, "job %s already runs on node %s", j.Name, self)
	}
	lazy := r.GetLazy()
	if lazy {
		if err := criu.LazyDumpAllowed(); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "node %s: %v", self, err)
		}
	}
	if err := c.checkTarget(ctx, to); err != nil {
		return nil, err
	}
	rec, err := c.records.Get(ctx, j.ID)
	if err != nil {
		if rec, err = c.records.Create(ctx, cluster.JobRecord{ID: j.ID, Name: j.Name}); err != nil {
			return nil, fmt.Errorf("%w: record job %s in the cluster: %w", errMigrationFailed, j.Name, err)
		}
	}
	if rec.Owner != self {
		return nil, fmt.Errorf("%w: the cluster's record says node %s owns job %s (epoch %d), not this node", errMigrationFailed, rec.Owner, j.Name, rec.Epoch)
	}
	attempt := randomToken()
	var (
		newEpoch  uint64
		resumed   migrateResumeReply
		resumeAt  time.Time
		moveStart time.Time
		memoryAt  time.Time
		tun       *tunnel
	)
	defer func() {
		if tun != nil {
			tun.stop()
		}
	}()
	move := func(ctx context.Context, j *store.Job, out jobs.Outgoing) (bool, error) {
		moveStart = time.Now()
		archive, size := out.Archive, out.Size
		in := migrateIn{From: self, Epoch: rec.Epoch, ID: j.ID, Name: j.Name, Cmd: j.Cmd, Dir: j.Dir, Log: j.LogPath,
			Policy: j.Policy, Size: size, Runtime: j.Runtime, Container: j.Container, Attempt: attempt}
		if out.PageServer != "" {
			var err error
			if tun, err = serveTunnel(c.node.Conn(), self, dialTCP(out.PageServer, "page server")); err != nil {
				return false, err
			}
			in.Pages = tun.self
		}
		if evs, err := c.m.Events(ctx, j.ID, 0, 0); err == nil {
			in.History = evs[max(0, len(evs)-maxHistory):]
		}
		t0 := time.Now()
		var err error
		if out.Pushed {
			in.Pushed = true
		} else if c.transfer == transferObjectStore {
			in.Key = fmt.Sprintf("migrations/%s/%d.cedana", j.ID, rec.Epoch)
			if in.SHA256, err = c.upload(ctx, archive, in.Key); err != nil {
				return false, fmt.Errorf("put the archive in %s: %w", c.objects.Name(), err)
			}
			defer func() { _ = c.objects.Delete(context.Background(), in.Key) }()
		} else {
			// No whole-file hash here: it would cost a full read of the
			// archive while the job is stopped. The target checks the
			// size, and the restore every entry's SHA-256 against the
			// manifest before anything runs (internal/archive).
			var stop func()
			if in.Blob, stop, err = c.serveBlob(archive); err != nil {
				return false, err
			}
			defer stop()
		}
		tUp := time.Since(t0)
		var inReply migrateInReply
		if err := c.callWatching(ctx, to, "migrate-in", in, &inReply); err != nil {
			c.abortLater(to, j.ID, attempt)
			if strings.Contains(err.Error(), "PID still in use") {
				err = fmt.Errorf("%w (a job that migrates should run with --pid-namespace, so that its PIDs never clash)", err)
			}
			return false, fmt.Errorf("node %s did not take the job: %w", to, err)
		}
		tIn := time.Since(t0) - tUp
		moved, handed, err := c.handOver(ctx, rec, to)
		if !handed {
			c.abortLater(to, j.ID, attempt)
			return false, fmt.Errorf("move the job's ownership to %s: %w", to, err)
		}
		newEpoch = moved.Epoch
		// The target takes the lease as soon as this node lets it go.
		c.fo.fencer.Drop(context.WithoutCancel(ctx), j.ID)
		resumeAt = time.Now()
		defer func() {
			c.log.Info("migration phases", "job", j.ID, "to", to, "upload", tUp, "target_fetch_restore", tIn,
				"hand_over", resumeAt.Sub(t0)-tUp-tIn, "resume_confirmed", time.Since(resumeAt))
		}()
		// Watched: a target that dies while it resumes never answers, and
		// the job is its own by now (the source ends its copy either way).
		rctx, rcancel := context.WithTimeout(ctx, resumeCallTimeout)
		err = c.callWatching(rctx, to, "migrate-resume", migrateResume{ID: j.ID, Epoch: moved.Epoch}, &resumed)
		rcancel()
		if err != nil {
			return true, fmt.Errorf("job %s now belongs to node %s (epoch %d), which did not confirm that it runs: %w; a live %s resumes its copy by itself within %v, and if %s is lost the job fails over from its latest committed checkpoint (with restore on failure) or is marked lost", j.Name, to, moved.Epoch, err, to, pendingTimeout, to)
		}
		return true, nil
	}
	opts := jobs.MigrateOptions{Lazy: lazy}
	if c.transfer == transferStream {
		opts.Push = func(ctx context.Context, j *store.Job) (archive.Destination, string, error) {
			return c.pushTo(ctx, to, j.ID, rec.Epoch, attempt)
		}
	}
	if lazy {
		opts.Settle = func(ctx context.Context, served error) (bool, bool) {
			complete, back := c.settleLazySource(ctx, j.ID, to, newEpoch, served)
			memoryAt = time.Now()
			return complete, back
		}
	}
	res, err := c.m.MigrateOut(ctx, j.ID, opts, move)
	if err != nil {
		if newEpoch == 0 {
			return nil, fmt.Errorf("%w; job %s still runs on node %s: %w", errMigrationFailed, j.Name, self, err)
		}
		return nil, err
	}
	out := &pb.MigrateResponse{From: self, To: to, Bytes: res.Size, Epoch: newEpoch, TotalMs: time.Since(start).Milliseconds()}
	// The tree stopped during the dump (counted whole) and ran again when
	// the target resumed it.
	out.DowntimeMs = (res.Dump + resumeAt.Sub(moveStart)).Milliseconds() + resumed.ResumedAfterMS
	if lazy && !memoryAt.IsZero() {
		out.MemoryMs = memoryAt.Sub(resumeAt).Milliseconds()
	}
	var job pb.Job
	gctx, gcancel := context.WithTimeout(ctx, 10*time.Second) // the target may die right after
	defer gcancel()
	if err := c.callUnary(gctx, to, "get", &pb.GetJobRequest{Job: j.ID}, &job); err == nil {
		job.Node = to
		out.Job = &job
	}
	return out, nil
}

// callWatching calls verb on node, giving up when the node goes down (no
// heartbeat for the node timeout) meanwhile: a target that dies in the
// middle of a restore never answers.
func (c *clusterNode) callWatching(ctx context.Context, node, verb string, req, out any) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go c.watchNode(ctx, node, func() { cancel(fmt.Errorf("node %s went down during %s", node, verb)) })
	err := c.node.Call(ctx, node, verb, req, out)
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// watchNode calls down once if node is seen down (or gone from the
// cluster) before ctx ends; it checks every second.
func (c *clusterNode) watchNode(ctx context.Context, node string, down func()) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		nodes, err := c.node.Nodes(ctx)
		if err != nil {
			continue
		}
		up := false
		for _, n := range nodes {
			up = up || (n.Name == node && n.State != cluster.StateDown)
		}
		if !up {
			down()
			return
		}
	}
}

// checkTarget refuses a node that is not in the cluster or not ready.
func (c *clusterNode) checkTarget(ctx context.Context, to string) error {
	nodes, err := c.node.Nodes(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w (the cluster's store did not answer; right after a NATS server died it may still be electing a leader: try again in a few seconds)", errMigrationFailed, err)
	}
	var names []string
	for _, n := range nodes {
		if n.Name == to {
			if n.State != cluster.StateReady {
				return status.Errorf(codes.FailedPrecondition, "node %s is %s", to, n.State)
			}
			return nil
		}
		names = append(names, n.Name)
	}
	return status.Errorf(codes.NotFound, "no node %q in the cluster (nodes: %s)", to, strings.Join(names, ", "))
}

// handOver moves the record to the target. A compare-and-set whose reply
// was lost (a NATS server died) may have happened anyway: the record is
// read back until its fate is known, so that the source never resumes a
// job the target may now own.
func (c *clusterNode) handOver(ctx context.Context, rec cluster.JobRecord, to string) (cluster.JobRecord, bool, error) {
	moved, err := c.records.Hand(ctx, rec, to)
	if err == nil {
		return moved, true, nil
	}
	deadline := time.Now().Add(pendingTimeout / 2)
	for time.Now().Before(deadline) {
		gctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		cur, gerr := c.records.Get(gctx, rec.ID)
		cancel()
		switch {
		case gerr != nil:
		case cur.Owner == to && cur.Epoch > rec.Epoch:
			c.log.Info("the hand-over happened although its reply was lost", "job", rec.ID, "epoch", cur.Epoch)
			return cur, true, nil
		case cur.Owner == rec.Owner && cur.Epoch == rec.Epoch:
			// Not handed: the write was lost, or the record changed
			// without a change of owner (a checkpoint was committed).
			// Try again from what it is now.
			if moved, err = c.records.Hand(ctx, cur, to); err == nil {
				return moved, true, nil
			}
		default:
			return cur, false, fmt.Errorf("%w (now owned by %s at epoch %d)", cluster.ErrStaleEpoch, cur.Owner, cur.Epoch)
		}
		time.Sleep(250 * time.Millisecond)
	}
	// Unknown: treat as handed. The target settles from the record; the
	// source copy must not run again in case the target owns the job.
	return rec, true, fmt.Errorf("the cluster's record could not be read back after the hand-over: %w", err)
}

// abortLater asks the target to remove its stopped copy and the archive
// that attempt brought, waiting for its answer at most abortWait. The
// abort is a courtesy: a target that never hears it settles from the
// record (it discards a copy it does not own after pendingTimeout, and
// an archive whose source went silent after pushSilence). A live target
// answers in milliseconds, so a migration retried at once finds it clean;
// a frozen or cut-off one answers nothing for the call's 10 s, which the
// job — stopped for its migration until the failure is handled — must not
// wait for: the call goes on in the background.
func (c *clusterNode) abortLater(to, id, attempt string) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.abortAttempt(to, id, attempt)
	}()
	select {
	case <-done:
	case <-time.After(abortWait):
	}
}

// resumeCallTimeout bounds the source's wait for the target to resume and
// confirm (the target's handler takes at most ~20 s: the record reaching
// the epoch, its lease, the confirmation).
const resumeCallTimeout = 45 * time.Second

// abortWait is how long a failed migration waits for its target to
// confirm an abort.
const abortWait = time.Second

// abortAttempt asks node to to drop what attempt brought of job id (all of
// it, with attempt empty).
func (c *clusterNode) abortAttempt(to, id, attempt string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.node.Call(ctx, to, "migrate-abort", migrateAbort{ID: id, Attempt: attempt}, nil); err != nil &&
		!errors.Is(err, cluster.ErrNodeUnreachable) {
		c.log.Warn("abort the target's copy", "node", to, "job", id, "err", err)
	}
}

// Ways a migration moves the archive (cluster.transfer).
const (
	transferStream      = "stream"
	transferObjectStore = "object-store"
)

// upload puts the archive in the object store and returns its SHA-256.
func (c *clusterNode) upload(ctx context.Context, path, key string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	w, err := c.objects.Create(ctx, key)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(w, h), f); err != nil {
		_ = w.Abort()
		return "", err
	}
	if err := w.Commit(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fetch writes the object key into dir, checking its size and SHA-256,
// and returns the file's path. A disk without room for it is refused
// before the transfer.
func (c *clusterNode) fetch(ctx context.Context, in migrateIn, dir string) (string, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err == nil {
		if free := int64(st.Bavail) * st.Bsize; free < in.Size {
			return "", fmt.Errorf("not enough space in %s for the archive: %d bytes free, %d needed", dir, free, in.Size)
		}
	}
	path := filepath.Join(dir, fmt.Sprintf("migrated-from-%s-%d.cedana", in.From, in.Epoch))
	tmp := path + ".part"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	if in.Blob != "" {
		err = c.fetchBlob(ctx, in.Blob, in.Size, f)
	} else {
		err = c.fetchObject(ctx, in, f)
	}
	// No fsync: this copy only feeds the restore that follows; the job's
	// durable checkpoints are those its policy commits (docs/cluster.md,
	// rule 6), and fsyncing here would stop the job longer.
	var sum string
	if err == nil && in.SHA256 != "" {
		sum, err = readerSHA256(io.NewSectionReader(f, 0, in.Size))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && in.SHA256 != "" && sum != in.SHA256 {
		err = fmt.Errorf("the archive arrived with SHA-256 %s, the source sent %s", sum, in.SHA256)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("receive the archive into %s: %w", dir, err)
	}
	return path, nil
}

// fetchObject copies the archive's object into f.
func (c *clusterNode) fetchObject(ctx context.Context, in migrateIn, f *os.File) error {
	obj, err := c.objects.Open(ctx, in.Key)
	if err != nil {
		return err
	}
	defer obj.Close()
	if obj.Size() != in.Size {
		return fmt.Errorf("the archive in the store has %d bytes, the source sent %d", obj.Size(), in.Size)
	}
	rc, err := obj.Stream(0, -1)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(f, rc)
	return err
}

func readerSHA256(r io.Reader) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// arrivalDir checks, on the target, that the record says node from owns
// job id at epoch (the migration is current), and returns the directory
// its archive arrives in.
func (c *clusterNode) arrivalDir(ctx context.Context, id, name, from string, epoch uint64) (string, error) {
	rec, err := c.recordAt(ctx, id, epoch)
	if err != nil {
		return "", err
	}
	if rec.Owner != from || rec.Epoch != epoch {
		return "", fmt.Errorf("job %s: the migration's epoch %d from %s is not the record's (%s at %d): %w", name, epoch, from, rec.Owner, rec.Epoch, cluster.ErrStaleEpoch)
	}
	return c.m.ArchiveDir(id)
}

// handleMigrateIn is the target's step 3.
func (c *clusterNode) handleMigrateIn(ctx context.Context, raw json.RawMessage) (any, error) {
	var in migrateIn
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, status.Error(codes.InvalidArgument, "unreadable request: "+err.Error())
	}
	if c.wasAborted(in.ID, in.Attempt) {
		return nil, errAttemptAborted
	}
	dir, err := c.arrivalDir(ctx, in.ID, in.Name, in.From, in.Epoch)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	var path string
	if in.Pushed {
		path, err = c.receivePushed(ctx, in)
	} else {
		path, err = c.fetch(ctx, in, dir)
	}
	if err != nil {
		_ = os.Remove(dir) // only if empty
		return nil, err
	}
	var proxy *pageServerProxy
	if in.Pages != "" {
		if proxy, err = listenPageServer(c.node.Conn(), c.node.Name(), in.Pages); err != nil {
			_ = os.Remove(path)
			_ = os.Remove(dir)
			return nil, err
		}
	}
	tFetch := time.Since(t0)
	// From now on the job exists here, not yet this node's: the sync loop
	// must leave it alone (failover.go).
	c.setImporting(in.ID, true)
	defer c.setImporting(in.ID, false)
	spec := jobs.ImportSpec{ID: in.ID, Name: in.Name, Cmd: in.Cmd, Dir: in.Dir, LogPath: in.Log, Policy: in.Policy,
		History: in.History, Runtime: in.Runtime}
	if in.Runtime != "" {
		spec.Container = jobs.MigratedContainerID(in.Container, in.From, c.node.Name())
	}
	if proxy != nil {
		spec.LazyPageServer = proxy.Addr()
	}
	j, err := c.m.Import(ctx, spec, path, in.Size)
	if err != nil {
		if proxy != nil {
			if perr := proxy.Close(); perr != nil {
				err = fmt.Errorf("%w (the tunnel to the source's page server: %v)", err, perr)
			}
		}
		_ = os.Remove(path)
		_ = os.Remove(dir)
		return nil, err
	}
	if proxy != nil {
		c.followLazy(in, proxy)
	}
	c.log.Info("migrated job restored, stopped until the hand-over", "job", in.ID, "from", in.From, "fetch", tFetch, "restore", time.Since(t0)-tFetch)
	c.mu.Lock()
	if !c.abortedLocked(in.ID, in.Attempt) {
		c.pending[in.ID] = &pendingImport{epoch: in.Epoch, attempt: in.Attempt, timer: time.AfterFunc(pendingTimeout, func() { c.settle(in.ID) })}
		c.mu.Unlock()
		return migrateInReply{PID: j.PID}, nil
	}
	c.mu.Unlock()
	// The source gave up while this node restored (it was slow, or
	// frozen): the copy goes now rather than when it would settle.
	if err := c.m.Discard(context.WithoutCancel(ctx), in.ID); err != nil {
		c.log.Error("discard a copy whose migration was aborted", "job", in.ID, "err", err)
	}
	return nil, errAttemptAborted
}

// errAttemptAborted: a migrate-in of an attempt its source gave up on.
var errAttemptAborted = errors.New("the source gave up on this migration attempt")

// wasAborted reports whether the source gave up on attempt of job id.
func (c *clusterNode) wasAborted(id, attempt string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.abortedLocked(id, attempt)
}

// abortedLocked is wasAborted with c.mu held.
func (c *clusterNode) abortedLocked(id, attempt string) bool {
	return attempt != "" && !c.aborted[[2]string{id, attempt}].IsZero()
}

// take removes a pending import, so that exactly one of resume, abort
// and settle acts on it.
func (c *clusterNode) take(id string) *pendingImport { return c.takeAttempt(id, "") }

// takeAttempt is take for the import that attempt brought (any, with
// attempt empty).
func (c *clusterNode) takeAttempt(id, attempt string) *pendingImport {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pending[id]
	if p != nil && attempt != "" && p.attempt != attempt {
		return nil // a later attempt's
	}
	if p != nil {
		p.timer.Stop()
		delete(c.pending, id)
	}
	return p
}

// holdLease takes job id's lease at epoch and has the fencer renew it,
// unless this node holds it already. An imported copy resumes only under a
// lease this node renews: the hand-over moves the record, not the lease
// (the source releases its own), and a target cut off right after it
// resumed its copy, before it took the lease, would run it unfenced while
// a survivor, seeing the target down and no lease, claims the job (rule
// 4) — two copies. With the lease taken first, a cut-off target freezes
// its copy at the lease's deadline (rule 3), before the lease expires and
// a survivor may claim. ErrLeaseHeld: another node holds it (a survivor
// claimed the job), or the source's lease was not released and has not
// expired yet.
//
// A store that does not answer (a NATS server of the cluster just died and
// its streams elect a new leader, seconds) is asked again for up to
// leaseRetry, and so is a lease still held: the source released its own
// just before, and a replica may not have seen that yet.
func (c *clusterNode) holdLease(ctx context.Context, id string, epoch uint64) error {
	deadline := time.Now().Add(leaseRetry)
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := c.takeLease(actx, id, epoch)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// takeLease is one try of holdLease: the fencer holds job id's lease at
// epoch when it returns nil — taken, or adopted when this node holds it
// already but the fencer does not (a previous daemon of the node took it,
// and the job ran on while the daemon restarted).
func (c *clusterNode) takeLease(ctx context.Context, id string, epoch uint64) error {
	if slices.Contains(c.fo.fencer.Holding(), id) {
		return nil
	}
	l, err := c.fo.leases.Acquire(ctx, id, epoch)
	if errors.Is(err, cluster.ErrLeaseHeld) {
		l, err = c.fo.leases.Adopt(ctx, id, epoch)
		if errors.Is(err, cluster.ErrLeaseLost) { // released meanwhile
			l, err = c.fo.leases.Acquire(ctx, id, epoch)
		}
	}
	if err != nil {
		return err
	}
	c.fo.fencer.Hold(l)
	return nil
}

// leaseRetry is how long holdLease keeps asking for a lease.
const leaseRetry = 8 * time.Second

// putBack returns an imported copy taken with take to the pending ones,
// to be settled from the record later.
func (c *clusterNode) putBack(id string, p *pendingImport) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending[id] != nil {
		return // another import of the job arrived meanwhile
	}
	p.timer = time.AfterFunc(pendingTimeout/4, func() { c.settle(id) })
	c.pending[id] = p
}

// handleMigrateResume is the target's step 5: resume only as the owner.
func (c *clusterNode) handleMigrateResume(ctx context.Context, raw json.RawMessage) (any, error) {
	t0 := time.Now()
	var r migrateResume
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, status.Error(codes.InvalidArgument, "unreadable request: "+err.Error())
	}
	rec, err := c.recordAt(ctx, r.ID, r.Epoch)
	if err != nil {
		return nil, err
	}
	if rec.Owner != c.node.Name() || rec.Epoch != r.Epoch {
		return nil, fmt.Errorf("job %s: resume at epoch %d refused, the record says %s at %d: %w", r.ID, r.Epoch, rec.Owner, rec.Epoch, cluster.ErrStaleEpoch)
	}
	p := c.take(r.ID)
	if p != nil && p.lazyErr != nil {
		// Its memory stopped arriving and its tree was killed: the
		// source's stopped copy is the job now.
		herr := c.handBack(ctx, r.ID)
		return nil, errors.Join(fmt.Errorf("job %s: not resumed: %w", r.ID, p.lazyErr), herr)
	}
	if p == nil {
		// Resumed already (a retried request, or settle did it).
		j, err := c.m.Get(ctx, r.ID)
		if err != nil {
			return nil, err
		}
		return migrateResumeReply{PID: j.PID}, nil
	}
	if err := c.holdLease(ctx, r.ID, r.Epoch); err != nil {
		c.putBack(r.ID, p)
		return nil, fmt.Errorf("job %s: not resumed: %w", r.ID, err)
	}
	c.m.Crashpoint(fault.CrashMigrateBeforeResume)
	resumedAfter := time.Since(t0)
	j, err := c.m.Resume(ctx, r.ID, resumeSettle)
	if err != nil {
		return nil, err
	}
	return migrateResumeReply{PID: j.PID, ResumedAfterMS: resumedAfter.Milliseconds()}, nil
}

// recordAt reads a job's record, waiting up to 10 s for it to reach epoch:
// a replicated bucket may answer a read from a replica that has not seen
// the latest write yet (seen with three servers, one just killed), and
// the caller of a verb may know of a newer epoch than that replica.
func (c *clusterNode) recordAt(ctx context.Context, id string, epoch uint64) (cluster.JobRecord, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, err := c.records.Get(ctx, id)
		if (err == nil && rec.Epoch >= epoch) || time.Now().After(deadline) || ctx.Err() != nil {
			return rec, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// handleMigrateAbort removes a stopped copy the source gave up on — never
// one that the record says this node owns.
func (c *clusterNode) handleMigrateAbort(ctx context.Context, raw json.RawMessage) (any, error) {
	var r migrateAbort
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, status.Error(codes.InvalidArgument, "unreadable request: "+err.Error())
	}
	if rec, err := c.records.Get(ctx, r.ID); err == nil && rec.Owner == c.node.Name() {
		return nil, fmt.Errorf("job %s belongs to this node (epoch %d): not aborted", r.ID, rec.Epoch)
	}
	c.mu.Lock()
	p := c.pushes[r.ID]
	if r.Attempt != "" {
		if c.aborted == nil {
			c.aborted = map[[2]string]time.Time{}
		}
		for k, at := range c.aborted {
			if time.Since(at) > 2*pendingTimeout {
				delete(c.aborted, k)
			}
		}
		c.aborted[[2]string{r.ID, r.Attempt}] = time.Now()
	}
	c.mu.Unlock()
	if p != nil && (r.Attempt == "" || p.attempt == r.Attempt) {
		c.dropPush(r.ID, p) // an archive that was arriving
	}
	if c.takeAttempt(r.ID, r.Attempt) == nil {
		return struct{}{}, nil // nothing pending
	}
	return struct{}{}, c.m.Discard(ctx, r.ID)
}

// settle decides a pending import's fate from the record, when neither
// resume nor abort arrived.
func (c *clusterNode) settle(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, err := c.records.Get(ctx, id)
	if err != nil {
		c.log.Warn("settle an imported job: the record is unreadable; trying again later", "job", id, "err", err)
		c.mu.Lock()
		if p := c.pending[id]; p != nil {
			p.timer = time.AfterFunc(pendingTimeout/4, func() { c.settle(id) })
		}
		c.mu.Unlock()
		return
	}
	p := c.take(id)
	if p == nil {
		return
	}
	if rec.Owner == c.node.Name() && p.lazyErr != nil {
		if err := c.handBack(ctx, id); err != nil {
			c.log.Error("hand a lazily imported job back to its source", "job", id, "err", err)
		}
		return
	}
	if rec.Owner == c.node.Name() {
		if err := c.holdLease(ctx, id, rec.Epoch); err != nil {
			c.log.Warn("settle an imported job: its lease is not free yet; trying again later", "job", id, "err", err)
			c.putBack(id, p)
			return
		}
		if _, err := c.m.Resume(ctx, id, resumeSettle); err != nil {
			c.log.Error("resume an imported job this node owns", "job", id, "err", err)
		}
		return
	}
	if err := c.m.Discard(ctx, id); err != nil {
		c.log.Error("discard an imported job another node owns", "job", id, "err", err)
	}
}
