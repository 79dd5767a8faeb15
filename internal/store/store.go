// Package store is the daemon's durable state: the jobs it runs or has
// adopted, the catalogue of their checkpoint archives, and a per-job event
// log.
//
// Two implementations satisfy [Store]:
//
//   - [Open] returns one backed by a single bbolt file. Every write is one
//     ACID transaction that is fsynced on commit, so the daemon may be killed
//     with SIGKILL at any moment and find a consistent store on restart. The
//     file is locked while open; a second daemon gets [ErrLocked] within the
//     lock timeout instead of hanging. The on-disk layout is documented in
//     schema.go and versioned by the migrations in migrations.go.
//   - [NewMemory] returns an in-memory fake with the same semantics, for tests
//     of code that uses a Store.
//
// Records are stored as JSON and every read returns a fresh copy, so callers
// may modify what they get without affecting the store. The store does not
// interpret Job.State or Checkpoint.State; lifecycles belong to the daemon.
// It does not touch checkpoint archives on disk either: deleting a record
// leaves its archive for the caller to remove.
package store

import (
	"context"
	"errors"
	"time"
)

// Errors that callers branch on with [errors.Is]. Returned errors wrap them
// with the identity of the record concerned.
var (
	// ErrNotFound means no job, checkpoint or event log has the given ID
	// (or, for GetJob, name).
	ErrNotFound = errors.New("not found")
	// ErrExists means a job ID or name is already taken.
	ErrExists = errors.New("already exists")
	// ErrInvalid means a record is missing a required field or an update
	// tried to change something immutable, such as a job's ID.
	ErrInvalid = errors.New("invalid")
	// ErrClosed means the store has been closed.
	ErrClosed = errors.New("store is closed")
	// ErrLocked means another process holds the store file open. The
	// returned error is a *[LockedError] that names the holder's PID when
	// it can be found.
	ErrLocked = errors.New("store is locked")
	// ErrSchemaTooNew means the store file was written by a newer cedana
	// whose schema this build does not know. The returned error is a
	// *[SchemaError].
	ErrSchemaTooNew = errors.New("schema version is newer than this build supports")
)

// Checkpoint states. The store does not enforce them; they are named here so
// that the daemon and its clients agree on the spelling.
const (
	CheckpointPending  = "pending"  // archive being written
	CheckpointComplete = "complete" // archive written and usable
	CheckpointFailed   = "failed"   // dump or write failed; see Error
)

// Policy is what the daemon does for a job on its own.
type Policy struct {
	// CheckpointEvery is the period of automatic checkpoints; 0 disables
	// them. Encoded in JSON as nanoseconds.
	CheckpointEvery time.Duration `json:"checkpoint_every,omitempty"`
	// Keep is how many of the newest complete checkpoints to keep; 0 keeps
	// all.
	Keep int `json:"keep,omitempty"`
	// KeepBytes caps the total size of kept checkpoints; 0 is no limit.
	KeepBytes int64 `json:"keep_bytes,omitempty"`
	// RestoreOnFailure restores the newest complete checkpoint when the job
	// dies.
	RestoreOnFailure bool `json:"restore_on_failure,omitempty"`
	// MaxRestores is how many automatic restores to try before giving up.
	MaxRestores int `json:"max_restores,omitempty"`
	// SkipUnchanged says whether a periodic checkpoint is skipped when the
	// job did not change since its last one: "safe" (also ""), unless the
	// job holds state that can change without it running (sockets, pipes
	// to outside, shared memory…); "always"; or "never".
	SkipUnchanged string `json:"skip_unchanged,omitempty"`
}

// Job is a process tree that the daemon started (`cedana run`) or adopted
// (`cedana manage PID`).
type Job struct {
	// ID is the job's immutable identity; CreateJob assigns one from
	// NewID("job-") when it is empty.
	ID string `json:"id"`
	// Name is unique among jobs and may change through UpdateJob.
	Name string `json:"name"`
	// State is the lifecycle state (running, dumping, checkpointed,
	// restoring, exited, failed, killed). Opaque to the store.
	State string `json:"state"`
	// PID is the root process of the job.
	PID int `json:"pid"`
	// StartTime is field 22 of /proc/PID/stat; with PID it identifies the
	// process across PID reuse.
	StartTime uint64 `json:"start_time"`
	// Cmd is the command line the job was started with.
	Cmd []string `json:"cmd,omitempty"`
	// Dir is the working directory.
	Dir string `json:"dir,omitempty"`
	// LogPath is where the job's output goes.
	LogPath string `json:"log_path,omitempty"`
	// Adopted is true for `cedana manage PID` rather than `cedana run`.
	Adopted bool `json:"adopted,omitempty"`
	// Runtime is "docker" or "runc" for a container job, "" for a process.
	Runtime string `json:"runtime,omitempty"`
	// Container is a container job's container ID (it changes when a
	// restore recreates the container).
	Container string `json:"container,omitempty"`
	// Policy is what the daemon does for the job on its own.
	Policy Policy `json:"policy"`
	// Restores counts automatic restores so far.
	Restores int `json:"restores"`
	// RestorePending says an automatic restore is due: the job failed
	// under a restore-on-failure policy. A restarted daemon resumes it;
	// a kill, a removal or giving up clears it.
	RestorePending bool `json:"restore_pending,omitempty"`
	// RestoringFrom is the checkpoint a restore in progress uses, recorded
	// before CRIU starts, so that a daemon restarted mid-restore can find
	// the restored tree (or know that none runs).
	RestoringFrom string `json:"restoring_from,omitempty"`
	// Cgroup is the job's cgroup, relative to the cgroup v2 root
	// ("cedana/<job ID>"); "" when the job has none.
	Cgroup string `json:"cgroup,omitempty"`
	// DumpLeaveRunning says whether a dump in progress leaves the job
	// running, so that a restarted daemon knows which state it wanted.
	DumpLeaveRunning bool `json:"dump_leave_running,omitempty"`
	// ExitCode is set once the job has exited.
	ExitCode *int `json:"exit_code,omitempty"`
	// Error is the last failure, for display.
	Error string `json:"error,omitempty"`
	// Template is the template a clone was started from (cedana run
	// --from-template); "" for other jobs.
	Template string `json:"template,omitempty"`
	// Address is a clone's IPv4 address in its own network namespace,
	// reachable from the host; NetNS names that namespace (ip netns).
	Address string `json:"address,omitempty"`
	NetNS   string `json:"netns,omitempty"`
	// LastCheckpointID and LastCheckpointAt describe the newest complete
	// checkpoint, kept here so that listing jobs never scans checkpoints.
	LastCheckpointID string    `json:"last_checkpoint_id,omitempty"`
	LastCheckpointAt time.Time `json:"last_checkpoint_at,omitempty"`
	// CreatedAt orders ListJobs; set by CreateJob when zero.
	CreatedAt time.Time `json:"created_at"`
	// UpdatedAt is set by CreateJob when zero and by every UpdateJob.
	UpdatedAt time.Time `json:"updated_at"`
}

// Change is what Commit writes together for one job.
type Change struct {
	// Job, if set, updates the job (as UpdateJob's fn).
	Job func(*Job) error
	// Put creates or replaces checkpoints of the job.
	Put []*Checkpoint
	// Delete removes checkpoint records of the job (missing ones are
	// ignored).
	Delete []string
	// Events are appended to the job's events (Seq and Time assigned).
	Events []Event
}

// Checkpoint is one archive in the catalogue.
type Checkpoint struct {
	// ID is the checkpoint's identity; PutCheckpoint assigns one from
	// NewID("ckpt-") when it is empty.
	ID string `json:"id"`
	// JobID is the job the checkpoint belongs to; it must exist.
	JobID string `json:"job_id"`
	// Path is the archive's path.
	Path string `json:"path"`
	// State is CheckpointPending, CheckpointComplete or CheckpointFailed.
	State string `json:"state"`
	// Size is the archive's size in bytes.
	Size int64 `json:"size"`
	// Error says why the checkpoint failed.
	Error string `json:"error,omitempty"`
	// CreatedAt orders ListCheckpoints; set by PutCheckpoint when zero.
	CreatedAt time.Time `json:"created_at"`
	// CompletedAt is when the archive was complete.
	CompletedAt time.Time `json:"completed_at,omitempty"`
	// DumpSeconds is how long the dump took.
	DumpSeconds float64 `json:"dump_seconds,omitempty"`
}

// Event is one entry in a job's event log.
type Event struct {
	// JobID is the job the event belongs to; it must exist.
	JobID string `json:"job_id"`
	// Seq is assigned by AddEvent: per job, starting at 1, increasing.
	Seq uint64 `json:"seq"`
	// Time is set by AddEvent when zero.
	Time time.Time `json:"time"`
	// Type is a short keyword: started, checkpointed, restored, died,
	// dump-failed, ...
	Type string `json:"type"`
	// Message is for people.
	Message string `json:"message"`
}

// Store is the daemon's durable state. Implementations are safe for
// concurrent use. Every method returns records that the caller owns.
type Store interface {
	// CreateJob adds j. It assigns j.ID when empty and sets j.CreatedAt and
	// j.UpdatedAt when zero, writing them back into j. It returns ErrExists
	// when the ID or the name is taken (a name may not equal another job's
	// ID either, so that GetJob is unambiguous) and ErrInvalid when j.Name
	// is empty.
	CreateJob(ctx context.Context, j *Job) error
	// UpdateJob reads job id, calls fn on a copy and stores the result, all
	// in one transaction; it sets UpdatedAt and returns the stored job. If
	// fn returns an error, nothing changes and UpdateJob returns that error
	// unwrapped. fn may rename the job (ErrExists if the new name is taken)
	// but not change its ID (ErrInvalid). fn must not call the Store.
	UpdateJob(ctx context.Context, id string, fn func(*Job) error) (*Job, error)
	// GetJob returns the job with that ID or, failing that, that name.
	GetJob(ctx context.Context, idOrName string) (*Job, error)
	// ListJobs returns all jobs ordered by CreatedAt, then ID. It does not
	// read checkpoints or events.
	ListJobs(ctx context.Context) ([]*Job, error)
	// DeleteJob removes job id with its checkpoint records and events.
	// Archives on disk are the caller's to remove.
	DeleteJob(ctx context.Context, id string) error
	// PutCheckpoint creates or replaces c.ID. It assigns c.ID when empty and
	// sets c.CreatedAt when zero. The job c.JobID must exist (ErrNotFound).
	PutCheckpoint(ctx context.Context, c *Checkpoint) error
	// GetCheckpoint returns checkpoint id.
	GetCheckpoint(ctx context.Context, id string) (*Checkpoint, error)
	// ListCheckpoints returns the checkpoints of job jobID, or of all jobs
	// when jobID is "", newest first: by CreatedAt, then ID, descending.
	// ErrNotFound if the job does not exist.
	ListCheckpoints(ctx context.Context, jobID string) ([]*Checkpoint, error)
	// DeleteCheckpoint removes the record of checkpoint id (not its
	// archive).
	DeleteCheckpoint(ctx context.Context, id string) error
	// Commit applies a Change to one job in a single transaction: one
	// durable write for a whole lifecycle step. It returns the job as
	// updated. An error from Change.Job aborts everything.
	Commit(ctx context.Context, jobID string, c Change) (*Job, error)
	// AddEvent appends e to the log of job e.JobID (ErrNotFound if there is
	// no such job), assigning Seq and, when zero, Time.
	AddEvent(ctx context.Context, e Event) (Event, error)
	// ListEvents returns up to limit events of job jobID with Seq > afterSeq,
	// oldest first; limit <= 0 means all. ErrNotFound if the job does not
	// exist.
	ListEvents(ctx context.Context, jobID string, afterSeq uint64, limit int) ([]Event, error)
	// Close releases the store; later calls return ErrClosed. Closing twice
	// is not an error.
	Close() error
}
