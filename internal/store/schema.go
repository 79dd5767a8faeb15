package store

// The bolt store's layout, at schema version 1. Keys are UTF-8 strings
// unless noted. Jobs and events are JSON of the Go types; checkpoints use the
// binary encoding in codec.go, because a job may have thousands of them and
// listing them must stay fast.
//
//	meta                                  bucket
//	  schema_version → "1"                decimal ASCII; see migrations.go
//	jobs                                  bucket
//	  <job id> → Job                      JSON
//	job_names                             bucket: the unique name index
//	  <job name> → <job id>
//	job_checkpoints                       bucket: the checkpoint catalogue, by job
//	  <job id>                            bucket, created with the job's first checkpoint
//	    <checkpoint id> → Checkpoint      codec.go, format 1
//	checkpoint_jobs                       bucket: the catalogue's index by checkpoint ID
//	  <checkpoint id> → <job id>
//	events                                bucket
//	  <job id>                            bucket, created with the job's first event;
//	                                      its bolt sequence is the last Seq issued
//	    <Seq, 8 bytes big-endian> → Event JSON
//
// Invariants, kept by every transaction and verified by checkConsistency:
//
//   - job_names holds exactly one entry per job, its name → its ID, and no
//     name is another job's ID (so GetJob's ID-then-name lookup is
//     unambiguous).
//   - job_checkpoints/<J>/<C> exists exactly when checkpoint_jobs/<C> = J,
//     its record has ID C and JobID J, and job J exists.
//   - events/<J> exists only for jobs that exist, and each key is its
//     event's Seq.
//
// ListJobs reads only the jobs bucket. ListCheckpoints(J) scans
// job_checkpoints/<J> sequentially; GetCheckpoint(C) is two lookups.
//
// To change the layout, add a migration to migrations.go, bump
// SchemaVersion, and describe the change here and in docs/state-store.md.

var (
	bucketMeta           = []byte("meta")
	bucketJobs           = []byte("jobs")
	bucketJobNames       = []byte("job_names")
	bucketJobCheckpoints = []byte("job_checkpoints")
	bucketCheckpointJobs = []byte("checkpoint_jobs")
	bucketEvents         = []byte("events")

	keySchemaVersion = []byte("schema_version")
)
