package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cedana/cedana/api/cedana/v1"
	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/cluster"
	"github.com/cedana/cedana/internal/criu"
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
			if tun, err = serveTunnel(c.node.BulkConn(), self, dialTCP(out.PageServer, "page server")); err != nil {
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
