// Package jobs is the daemon's job manager: it runs or adopts process
// trees as jobs, checkpoints and restores them through the same engine as
// the standalone client (internal/checkpoint), applies their policies
// (periodic checkpoints, retention, restore on failure), and keeps the
// catalogue in the state store.
//
// Every lifecycle change goes through the store in one transaction that
// first checks the transition (see State), so two operations can never
// both start on the same job, and a daemon killed at any moment finds a
// consistent catalogue when it starts again (see Manager.Start).
package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cedana/cedana/internal/fault"
	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/storage"
	"github.com/cedana/cedana/internal/store"
)

// Errors callers branch on.
var (
	// ErrNoCheckpoint means a restore found no complete checkpoint.
	ErrNoCheckpoint = errors.New("no complete checkpoint")
	// ErrNoLog means the job has no log (it was adopted, not started).
	ErrNoLog = errors.New("job has no log")
)

// Config holds the manager's settings.
type Config struct {
	// CheckpointDir holds archives, one subdirectory per job.
	CheckpointDir string
	// Storage, if set, receives process jobs' archives instead of
	// CheckpointDir (see storage.go); retention deletes from it.
	Storage storage.Backend
	// LogDir holds jobs' stdout/stderr logs.
	LogDir string
	// DefaultPolicy applies to jobs whose request sets no policy field.
	DefaultPolicy store.Policy
	// MaxRestores is the default limit of automatic restores.
	MaxRestores int
	// RestoreBackoff is the delay before the first automatic restore; it
	// doubles with each further one, up to 30 s.
	RestoreBackoff time.Duration
	// TemplateDir holds templates (see internal/template); empty: a
	// "templates" directory next to CheckpointDir.
	TemplateDir string
	// NoCgroups runs jobs without cgroups of their own (see cgroup.go);
	// they are also skipped when the machine has no cgroup v2 hierarchy.
	NoCgroups bool
	// CgroupParent is the cgroup (under the cgroup v2 mount) that holds
	// the job cgroups; empty: "cedana".
	CgroupParent string
	// Dedup stores process jobs' checkpoints deduplicated (see
	// storage.go, internal/chunks).
	Dedup bool
	// NetnsPool is how many network namespaces for clones the daemon
	// keeps ready once templates that listen are made or cloned (see
	// internal/template/netpool.go); 0: clones make their own.
	NetnsPool int
}

// Manager runs jobs. It is safe for concurrent use.
type Manager struct {
	cfg        Config
	ckStore    storage.Backend // where checkpoints go; nil: local files (storage.go)
	store      store.Store
	engine     Engine
	containers Containers     // nil: no container jobs
	cg         cgroups        // job cgroups; unavailable: /proc walks
	fault      fault.Injector // crash points, for tests of crash windows
	log        *slog.Logger
	metrics    *Metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	live   map[string]*supervisor // by job ID
	frozen map[string]bool        // jobs the cluster's fencer holds stopped (cluster.go)
	// heldStopped: jobs a migration keeps stopped until the move is decided.
	heldStopped map[string]bool
	// lazy: lazily migrated jobs whose memory is (or was) arriving, and
	// what to do when it stops arriving (lazy.go).
	lazy         map[string]*lazyState
	onLazyFailed func(id string, err error)

	// skips holds the baselines of periodic checkpoints (skip.go).
	skips skipper
	// templates: the template store, image cache and clone network.
	templates templates

	// gate, when set (cluster mode), is asked before a job runs again
	// without a user asking: see SetGate.
	gate Gate

	// dumps bounds concurrent checkpoints: each freezes a job and keeps
	// a core busy compressing; more at once only slows them all down.
	dumps chan struct{}
}

// New returns a Manager. containers and metrics may be nil.
func New(cfg Config, st store.Store, engine Engine, containers Containers, log *slog.Logger, metrics *Metrics) *Manager {
	if cfg.MaxRestores <= 0 {
		cfg.MaxRestores = 3
	}
	if cfg.RestoreBackoff <= 0 {
		cfg.RestoreBackoff = time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var cg cgroups
	if !cfg.NoCgroups {
		var why string
		if cg, why = findCgroups(cfg.CgroupParent); why != "" {
			log.Warn("jobs run without cgroups of their own (their processes are found through /proc instead): " + why)
		}
	}
	// Jobs get stdin, stdout and stderr only: descriptors the daemon
	// inherited (a make jobserver's pipe, a test harness's) would
	// otherwise leak into every job, where CRIU must dump them and a
	// periodic checkpoint cannot tell whether they carry data from outside.
	// Go opens its own with O_CLOEXEC; inherited ones are marked here.
	if err := unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err != nil {
		log.Warn("cannot mark inherited descriptors close-on-exec: jobs may inherit them", "err", err)
	}
	ckStore, err := checkpointStore(cfg)
	if err != nil {
		log.Warn("job checkpoints are stored without deduplication", "err", err)
		ckStore = cfg.Storage
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{cfg: cfg, store: st, engine: engine, containers: containers, log: log, metrics: metrics,
		cg: cg, fault: fault.FromEnv(), ckStore: ckStore,
		ctx: ctx, cancel: cancel, live: map[string]*supervisor{},
		dumps: make(chan struct{}, max(1, runtime.NumCPU()))}
}

// Close stops supervising jobs. The jobs themselves keep running; a new
// daemon adopts them again on Start.
func (m *Manager) Close() {
	m.cancel()
	m.mu.Lock()
	for _, s := range m.live {
		s.stop()
	}
	m.live = map[string]*supervisor{}
	m.mu.Unlock()
	m.wg.Wait()
	m.tpl().net.Close() // the pool's namespaces; the bridge, once no clone runs
}

// Get returns a job by ID or name.
func (m *Manager) Get(ctx context.Context, ref string) (*store.Job, error) {
	return m.store.GetJob(ctx, ref)
}

// List returns every job, oldest first.
func (m *Manager) List(ctx context.Context) ([]*store.Job, error) {
	return m.store.ListJobs(ctx)
}

// Events returns a job's events after seq.
func (m *Manager) Events(ctx context.Context, ref string, after uint64, limit int) ([]store.Event, error) {
	j, err := m.store.GetJob(ctx, ref)
	if err != nil {
		return nil, err
	}
	return m.store.ListEvents(ctx, j.ID, after, limit)
}

// Checkpoints returns a job's checkpoints (all jobs' when ref is ""),
// newest first.
func (m *Manager) Checkpoints(ctx context.Context, ref string) ([]*store.Checkpoint, error) {
	if ref == "" {
		return m.store.ListCheckpoints(ctx, "")
	}
	j, err := m.store.GetJob(ctx, ref)
	if err != nil {
		return nil, err
	}
	return m.store.ListCheckpoints(ctx, j.ID)
}

// DeleteCheckpoint removes a checkpoint's record, then its archive: a
// crash in between leaves an unlisted file, never a listed checkpoint
// whose archive is gone.
func (m *Manager) DeleteCheckpoint(ctx context.Context, id string) error {
	c, err := m.store.GetCheckpoint(ctx, id)
	if err != nil {
		return err
	}
	if c.State == store.CheckpointPending {
		return fmt.Errorf("%w: checkpoint %s is being written", ErrIllegalTransition, id)
	}
	_, err = m.store.Commit(ctx, c.JobID, store.Change{
		Job: func(j *store.Job) error {
			if j.RestoringFrom == id {
				return fmt.Errorf("%w: checkpoint %s is being restored", ErrIllegalTransition, id)
			}
			if j.LastCheckpointID == id {
				j.LastCheckpointID, j.LastCheckpointAt = "", time.Time{}
			}
			return nil
		},
		Delete: []string{id},
		Events: []store.Event{{Type: "checkpoint-deleted", Message: fmt.Sprintf("checkpoint %s deleted", id)}},
	})
	if err != nil {
		return err
	}
	if err := m.removeArchive(c.Path); err != nil {
		return fmt.Errorf("checkpoint %s is no longer listed, but its archive could not be removed: %w", id, err)
	}
	return nil
}

// UpdatePolicy replaces a job's policy and applies it at once.
func (m *Manager) UpdatePolicy(ctx context.Context, ref string, p store.Policy) (*store.Job, error) {
	if err := ValidSkipPolicy(p.SkipUnchanged); err != nil {
		return nil, err
	}
	j, err := m.store.GetJob(ctx, ref)
	if err != nil {
		return nil, err
	}
	j, err = m.store.UpdateJob(ctx, j.ID, func(j *store.Job) error { j.Policy = p; return nil })
	if err != nil {
		return nil, err
	}
	m.event(j.ID, "policy", "policy changed: %s", describePolicy(p))
	if State(j.State).alive() {
		m.supervise(j, false)
	}
	return j, nil
}

// event records an event, logging (not failing) if the store refuses.
func (m *Manager) event(jobID, typ, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if _, err := m.store.AddEvent(context.Background(), store.Event{JobID: jobID, Type: typ, Message: msg}); err != nil {
		m.log.Warn("record event", "job", jobID, "type", typ, "err", err)
	}
	m.log.Info(msg, "job", jobID, "event", typ)
}

// setState moves a job to a new state after checking the transition.
func (m *Manager) transition(ctx context.Context, id, op string, to State, also func(*store.Job)) (*store.Job, error) {
	return m.store.UpdateJob(ctx, id, func(j *store.Job) error {
		if err := check(op, State(j.State), j.Name); err != nil {
			return err
		}
		j.State = string(to)
		if also != nil {
			also(j)
		}
		return nil
	})
}

// jobDir is where a job's archives go.
func (m *Manager) jobDir(id string) string { return filepath.Join(m.cfg.CheckpointDir, id) }

func removeArchive(path string) error {
	if path == "" {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

func describePolicy(p store.Policy) string {
	s := "no periodic checkpoints"
	if p.CheckpointEvery > 0 {
		s = "checkpoint every " + p.CheckpointEvery.String()
	}
	if p.Keep > 0 {
		s += fmt.Sprintf(", keep %d", p.Keep)
	}
	if p.KeepBytes > 0 {
		s += fmt.Sprintf(", keep at most %d bytes", p.KeepBytes)
	}
	if p.RestoreOnFailure {
		s += fmt.Sprintf(", restore on failure (up to %d times)", p.MaxRestores)
	}
	if p.CheckpointEvery > 0 && p.SkipUnchanged != "" && p.SkipUnchanged != SkipSafe {
		s += ", skip unchanged: " + p.SkipUnchanged
	}
	return s
}

// identity returns a process's start time, or an error if it is gone.
func identity(pid int) (uint64, error) {
	st, err := proc.ReadStat(pid)
	if err != nil {
		return 0, err
	}
	if st.State == 'Z' || st.State == 'X' {
		return 0, fmt.Errorf("%w: PID %d has exited", proc.ErrNoProcess, pid)
	}
	return st.StartTime, nil
}

// sameProcess reports whether pid is still the process that started at st.
func sameProcess(pid int, st uint64) bool {
	got, err := identity(pid)
	return err == nil && got == st
}

// sortNewestFirst orders checkpoints newest first.
func sortNewestFirst(cs []*store.Checkpoint) {
	sort.SliceStable(cs, func(i, k int) bool { return cs[i].CreatedAt.After(cs[k].CreatedAt) })
}
