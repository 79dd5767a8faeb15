package cluster

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Fence stops and ends a job's local copy; the job layer implements it
// (a cgroup freezer, cgroup.kill). Each call must be idempotent and quick.
type Fence interface {
	// Freeze stops every task of the job's copy, losing nothing.
	Freeze(job string) error
	// Thaw lets a frozen copy run again.
	Thaw(job string) error
	// Kill ends the copy for good: another node owns the job now.
	Kill(job string) error
}

// Fencer keeps this node's job leases renewed and stops a job's copy when
// it can no longer be sure it owns the job (docs/cluster.md, rule 3):
// frozen at the lease's deadline without a successful renewal, killed once
// a newer epoch is known, thawed if the lease could be renewed or taken
// again with the record still ours.
type Fencer struct {
	leases *Leases
	jobs   *Jobs
	fence  Fence
	tick   time.Duration
	log    *slog.Logger

	mu   sync.Mutex
	held map[string]*held
	// deadlines is the last round's deadline of every held, unfrozen copy
	// (read by Deadlines while the round's goroutines may renew leases).
	deadlines map[string]time.Time
}

// held is one lease the fencer keeps. Run's deadline check and the
// goroutine that renews it (at most one at a time: busy) share it under mu;
// no network call is made with mu held, so that a renewal that hangs (a
// NATS connection wedged behind a large publish to a cut-off server) never
// delays the freezing of the copy at its deadline.
type held struct {
	busy atomic.Bool

	mu     sync.Mutex
	lease  *Lease
	frozen bool
}

// Fenced reports why a job stopped, for the job layer's history.
type Fenced struct {
	Job string
	// Killed: a newer epoch exists (another node owns the job); otherwise
	// the copy is frozen until the fencer knows.
	Killed bool
}

// NewFencer returns a fencer; Run drives it. A nil logger discards.
func NewFencer(ls *Leases, js *Jobs, f Fence, log *slog.Logger) *Fencer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Fencer{leases: ls, jobs: js, fence: f, tick: ls.period / 8, log: log, held: map[string]*held{}}
}

// Hold makes the fencer renew l and fence its job.
func (f *Fencer) Hold(l *Lease) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held[l.Job] = &held{lease: l}
}

// Drop stops renewing a job's lease (it stopped or moved) and releases it.
func (f *Fencer) Drop(ctx context.Context, job string) {
	f.mu.Lock()
	h := f.held[job]
	delete(f.held, job)
	f.mu.Unlock()
	if h != nil {
		h.mu.Lock()
		l := *h.lease
		h.mu.Unlock()
		_ = f.leases.Release(ctx, &l)
	}
}

// Holding lists the jobs whose leases the fencer keeps.
func (f *Fencer) Holding() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for j := range f.held {
		out = append(out, j)
	}
	return out
}

// Run checks every held lease every eighth of the lease period (renewing it
// once a quarter period has passed since the last renewal) and fences
// what it must, until ctx ends; events receives each fencing (it may be
// nil). Each round first freezes every copy past its deadline, with no
// network call, then renews all leases at once: a partition that makes
// renewals hang cannot delay the freezing of any job.
func (f *Fencer) Run(ctx context.Context, events chan<- Fenced) {
	t := time.NewTicker(f.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f.mu.Lock()
		jobs := make([]*held, 0, len(f.held))
		for _, h := range f.held {
			jobs = append(jobs, h)
		}
		f.mu.Unlock()
		now := time.Now()
		for _, h := range jobs {
			h.mu.Lock()
			if !h.frozen && now.After(h.lease.Deadline()) {
				f.freeze(h, "no lease renewal before the deadline")
			}
			h.mu.Unlock()
		}
		// Renewals run beside the rounds: one still in flight (hung) is
		// not started again, and never holds up the next round's check.
		for _, h := range jobs {
			if !h.busy.CompareAndSwap(false, true) {
				continue
			}
			go func() {
				defer h.busy.Store(false)
				if ev, ok := f.check(ctx, h); ok && events != nil {
					select {
					case events <- ev:
					default:
					}
				}
			}()
		}
		deadlines := make(map[string]time.Time, len(jobs))
		for _, h := range jobs {
			h.mu.Lock()
			if !h.frozen {
				deadlines[h.lease.Job] = h.lease.Deadline()
			}
			h.mu.Unlock()
		}
		f.mu.Lock()
		for j := range deadlines {
			if _, ok := f.held[j]; !ok {
				delete(deadlines, j)
			}
		}
		f.deadlines = deadlines
		f.mu.Unlock()
	}
}

// check renews one lease and decides the copy's fate. One check of h runs
// at a time (h.busy); Run's deadline check may freeze h meanwhile.
func (f *Fencer) check(ctx context.Context, h *held) (Fenced, bool) {
	h.mu.Lock()
	l, frozen := *h.lease, h.frozen
	h.mu.Unlock()
	if !frozen && time.Since(l.sent) < f.leases.period/4 {
		// Renewed recently enough: renewals go every quarter period
		// (rule 2), deadlines are checked every eighth.
		return Fenced{}, false
	}
	rctx, cancel := context.WithTimeout(ctx, f.tick)
	err := f.leases.Renew(rctx, &l) // a copy: h.lease changes only under h.mu
	cancel()
	switch {
	case err == nil:
		h.mu.Lock()
		defer h.mu.Unlock()
		h.lease.rev, h.lease.sent = l.rev, l.sent
		if h.frozen && time.Now().Before(h.lease.Deadline()) {
			// Renewed by CAS from our revision: nobody took the lease, so
			// the epoch is still ours. (A renewal that came back after
			// its own deadline thaws nothing: the next one will.)
			f.thaw(h)
		}
		return Fenced{}, false
	case errors.Is(err, ErrLeaseLost):
		h.mu.Lock()
		if !h.frozen {
			f.freeze(h, "lease lost")
		}
		h.mu.Unlock()
		return f.resolve(ctx, h)
	default:
		// NATS unreachable: keep trying; Run's deadline check fences.
		f.log.Debug("lease renewal failed", "job", l.Job, "err", err, "deadline", l.Deadline())
		return Fenced{}, false
	}
}

// resolve learns, after a lost lease, whether another node owns the job:
// then the copy is killed; if not, the lease is taken again and the copy
// thawed; if that cannot be known yet, it stays frozen.
func (f *Fencer) resolve(ctx context.Context, h *held) (Fenced, bool) {
	h.mu.Lock()
	l := *h.lease
	h.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, f.tick)
	defer cancel()
	rec, err := f.jobs.Get(rctx, l.Job)
	if err != nil {
		return Fenced{Job: l.Job}, true // unknown: stay frozen
	}
	if rec.Owner != l.Node || rec.Epoch != l.Epoch {
		if kerr := f.fence.Kill(l.Job); kerr != nil {
			f.log.Error("kill of a fenced copy failed", "job", l.Job, "err", kerr)
			return Fenced{Job: l.Job}, true
		}
		f.log.Warn("job owned elsewhere now: local copy killed", "job", l.Job, "owner", rec.Owner, "epoch", rec.Epoch, "ours", l.Epoch)
		f.mu.Lock()
		delete(f.held, l.Job)
		f.mu.Unlock()
		return Fenced{Job: l.Job, Killed: true}, true
	}
	// The record is still ours: the lease only expired. Take it again; if
	// someone else holds it now, they may be claiming: stay frozen.
	nl, err := f.leases.Acquire(rctx, l.Job, l.Epoch)
	if err != nil {
		return Fenced{Job: l.Job}, true
	}
	// Re-read: a claimer could have moved the record between our Get and
	// our Acquire only if it held the lease, which it cannot since ours
	// was created; but its CAS could have landed before our Acquire.
	if rec2, err := f.jobs.Get(rctx, l.Job); err != nil || rec2.Epoch != l.Epoch || rec2.Owner != l.Node {
		_ = f.leases.Release(rctx, nl)
		return Fenced{Job: l.Job}, true
	}
	h.mu.Lock()
	h.lease = nl
	f.thaw(h)
	h.mu.Unlock()
	return Fenced{}, false
}

// freeze and thaw are called with h.mu held.
func (f *Fencer) freeze(h *held, why string) {
	if err := f.fence.Freeze(h.lease.Job); err != nil {
		f.log.Error("FREEZE FAILED: the job may run in two places", "job", h.lease.Job, "err", err)
		return
	}
	h.frozen = true
	f.log.Warn("job frozen", "job", h.lease.Job, "why", why)
}

func (f *Fencer) thaw(h *held) {
	if err := f.fence.Thaw(h.lease.Job); err != nil {
		f.log.Error("thaw failed", "job", h.lease.Job, "err", err)
		return
	}
	h.frozen = false
	f.log.Info("job thawed: lease held again", "job", h.lease.Job)
}

// Deadlines says, for each held lease whose copy is not frozen, when the
// copy must be frozen if no renewal succeeds: what a watchdog outside the
// daemon needs to fence the jobs if the daemon itself stops.
func (f *Fencer) Deadlines() map[string]time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]time.Time, len(f.deadlines))
	for j, d := range f.deadlines {
		if _, ok := f.held[j]; ok {
			out[j] = d
		}
	}
	return out
}

// Period is the lease period.
func (f *Fencer) Period() time.Duration { return f.leases.period }
