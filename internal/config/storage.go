package config

// Storage says where checkpoint archives live: the daemon's job checkpoints
// and `client dump` without -d (see docs/storage.md). It maps onto
// internal/storage.Config.
type Storage struct {
	// Backend is local (the checkpoint directory; the default), dir (a
	// shared mount), s3 or jetstream.
	Backend string `json:"backend" setting:"enum=local,dir,s3,jetstream"`
	// Dir configures the dir backend.
	Dir StorageDir `json:"dir"`
	// S3 configures the s3 backend. Credentials are never configured
	// here: they come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the
	// shared credentials file, as for AWS tools.
	S3 StorageS3 `json:"s3"`
	// JetStream configures the jetstream backend.
	JetStream StorageJetStream `json:"jetstream"`
	// Encryption configures encryption at rest.
	Encryption StorageEncryption `json:"encryption"`
	// Dedup stores the daemon's job checkpoints deduplicated: the memory
	// frames successive checkpoints of a job share are stored once
	// (internal/chunks, docs/periodic.md). `client dump` archives never
	// are. Default true.
	Dedup bool `json:"dedup"`
}

// StorageDir configures the dir backend.
type StorageDir struct {
	// Path is the shared directory (an NFS or similar mount); it must exist.
	Path string `json:"path"`
}

// StorageS3 configures the s3 backend.
type StorageS3 struct {
	// Endpoint is the store's URL (http://host:port or https://…); empty
	// means AWS S3 itself.
	Endpoint string `json:"endpoint"`
	// Bucket must exist; Cedana never creates it.
	Bucket string `json:"bucket"`
	// Region, e.g. us-east-1; empty lets the client discover it.
	Region string `json:"region"`
	// Prefix is prepended to every object name.
	Prefix string `json:"prefix"`
	// PathStyle addresses buckets as endpoint/bucket (most self-hosted
	// stores need it).
	PathStyle bool `json:"path_style"`
}

// StorageJetStream configures the jetstream backend.
type StorageJetStream struct {
	// URL of the NATS servers, comma-separated; nats://user:pass@host:port
	// carries a user and password (never logged).
	URL string `json:"url"`
	// Creds is a NATS credentials file, instead of a password.
	Creds string `json:"creds"`
	// Bucket is the object store's name.
	Bucket string `json:"bucket"`
	// CreateBucket creates the object store when it is missing.
	CreateBucket bool `json:"create_bucket"`
	// Replicas of a created object store (default 1).
	Replicas int `json:"replicas"`
}

// StorageEncryption configures encryption at rest.
type StorageEncryption struct {
	// KeyFile is a key made by `cedana storage keygen FILE`. When set,
	// every archive written to a non-local backend is encrypted, and
	// reading one needs it.
	KeyFile string `json:"key_file"`
}
