package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStreamConfig configures the jetstream backend (storage.jetstream.* in the
// configuration).
type JetStreamConfig struct {
	// URL of the NATS servers, comma-separated ("nats://127.0.0.1:4222"); a user and
	// password may be given in it ("nats://user:pass@host:4222"). Never logged with them.
	URL string
	// CredsFile is a NATS credentials file (JWT + nkey), instead of a password.
	CredsFile string
	// Bucket is the object store's name.
	Bucket string
	// CreateBucket creates the object store (with Replicas) when it does not exist;
	// otherwise a missing one is an error.
	CreateBucket bool
	// Replicas for a created object store (default 1). Large archives were tested at R1.
	Replicas int
	// PartSize is the size of each stored part in bytes (default 16 MiB): large archives
	// are stored as several objects so that no single object store entry holds gigabytes,
	// and a ranged read fetches at most one part more than it needs.
	PartSize int64
}

// JetStream is a backend on a NATS JetStream object store. An archive of any size is
// stored as parts — objects named ".cedana-parts/<upload>/<n>", PartSize bytes each — and
// an index object under the archive's key, written last, listing them with their sizes and
// SHA-256 digests. The index is the commit point: until it is written nothing is listed, a
// killed writer leaves only unlisted parts and the chunks of the part it was writing
// (SweepParts reclaims both), and Delete removes the index before the parts. The writer is
// in jetstream_writer.go.
type JetStream struct {
	cfg  JetStreamConfig
	nc   *nats.Conn // nil when the connection is the caller's (OpenJetStreamShared)
	js   jetstream.JetStream
	obs  jetstream.ObjectStore
	name string
}

var _ Backend = (*JetStream)(nil)

const (
	jsPartsPrefix  = reservedPrefix + "parts/"
	jsChunkSize    = 512 << 10 // message size within a part (under the default 1 MiB max_payload)
	metaIndex      = "cedana-index"
	metaUpload     = "cedana-upload"
	metaSize       = "cedana-size"
	jsIndexVersion = 1
)

// jsIndex is the content of an index object.
type jsIndex struct {
	Version  int      `json:"version"`
	Size     int64    `json:"size"`
	PartSize int64    `json:"part_size"`
	Upload   string   `json:"upload"`
	Parts    []jsPart `json:"parts"`
}

type jsPart struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Digest string `json:"digest"` // as the object store reports it ("SHA-256=…")
	// NUID names the part's chunk subject and Chunks counts its messages, as its info
	// message does. With them a reader needs no info request per part and reads
	// consecutive parts with one consumer (jetstream_reader.go). Indexes written before
	// 2026-12-07 lack them; version 1 readers ignore them.
	NUID   string `json:"nuid,omitempty"`
	Chunks uint32 `json:"chunks,omitempty"`
}

// NewJetStream connects to NATS and opens (or, with CreateBucket, creates) the object store.
func NewJetStream(ctx context.Context, cfg JetStreamConfig) (*JetStream, error) {
	j := &JetStream{cfg: cfg}
	j.name = "jetstream://" + cfg.Bucket + " at " + redactServers(cfg.URL)
	if cfg.URL == "" {
		return nil, j.err("connect", "", errors.New("no server URL configured"), "set storage.jetstream.url, e.g. nats://127.0.0.1:4222")
	}
	if cfg.Bucket == "" {
		return nil, j.err("connect", "", errors.New("no object store configured"), "set storage.jetstream.bucket")
	}
	if j.cfg.PartSize <= 0 {
		j.cfg.PartSize = defaultPartSize
	}
	if j.cfg.Replicas <= 0 {
		j.cfg.Replicas = 1
	}
	opts := []nats.Option{nats.Name("cedana-storage"), nats.Timeout(10 * time.Second), nats.MaxReconnects(10)}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, j.classify("connect", "", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, j.classify("connect", "", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	obs, err := js.ObjectStore(cctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) && cfg.CreateBucket {
		obs, err = js.CreateObjectStore(cctx, jetstream.ObjectStoreConfig{
			Bucket: cfg.Bucket, Replicas: j.cfg.Replicas, Storage: jetstream.FileStorage,
			Description: "Cedana checkpoints",
		})
	}
	if err != nil {
		nc.Close()
		return nil, j.classify("connect", "", err)
	}
	j.nc, j.js, j.obs = nc, js, obs
	return j, nil
}

// Close closes the connection to NATS.
func (j *JetStream) Close() error {
	if j.nc != nil {
		j.nc.Close()
	}
	return nil
}

// Name implements Backend.
func (j *JetStream) Name() string { return j.name }

func (j *JetStream) err(op, key string, err error, hint string) error {
	return &Error{Backend: j.name, Op: op, Key: key, Err: err, Hint: hint}
}

func (j *JetStream) classify(op, key string, err error) error {
	var apiErr *jetstream.APIError
	msg := strings.ToLower(err.Error())
	switch {
	case errors.Is(err, context.Canceled):
		return j.err(op, key, err, "")
	case errors.Is(err, jetstream.ErrDigestMismatch):
		return j.err(op, key, withKind(ErrCorrupt, err), "")
	case errors.Is(err, jetstream.ErrObjectNotFound):
		return j.err(op, key, withKind(ErrNotExist, err), "")
	case errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound):
		return j.err(op, key, withKind(ErrNoBucket, err),
			fmt.Sprintf("create the object store (`nats object add %s --replicas %d`) or set storage.jetstream.create_bucket", j.cfg.Bucket, j.cfg.Replicas))
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return j.err(op, key, withKind(ErrNoBucket, err), "enable JetStream on the server (nats-server -js, or a jetstream {} block) and for this account")
	case errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked) ||
		strings.Contains(msg, "authorization violation") || strings.Contains(msg, "authentication"):
		return j.err(op, key, withKind(ErrAccess, err), "check the user and password in storage.jetstream.url or storage.jetstream.creds")
	case errors.As(err, &apiErr) && (apiErr.ErrorCode == 10023 || apiErr.ErrorCode == 10047 || apiErr.ErrorCode == 10028),
		strings.Contains(msg, "insufficient resources"), strings.Contains(msg, "maximum bytes exceeded"),
		strings.Contains(msg, "resource limits exceeded"), strings.Contains(msg, "no space"):
		return j.err(op, key, withKind(ErrNoSpace, err), "free space on the servers, raise the object store's max_bytes or the account's JetStream limits")
	case errors.Is(err, nats.ErrNoServers) || errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		strings.Contains(msg, "connection refused") || strings.Contains(msg, "no such host"):
		return j.err(op, key, withKind(ErrUnreachable, err), "check storage.jetstream.url and that nats-server (with JetStream) is running and reachable")
	}
	return j.err(op, key, err, "")
}

func (j *JetStream) deleteParts(ctx context.Context, parts []jsPart) {
	for _, p := range parts {
		_ = j.obs.Delete(ctx, p.Name)
	}
}

// readIndex reads and checks the index object of key.
func (j *JetStream) readIndex(ctx context.Context, key string) (*jsIndex, error) {
	info, err := j.obs.GetInfo(ctx, key)
	if err != nil {
		return nil, j.classify("open", key, err)
	}
	if info.Metadata[metaIndex] == "" {
		return nil, j.err("open", key, withKind(ErrCorrupt, errors.New("not a Cedana index object")), "the object was not written by Cedana's jetstream backend")
	}
	if info.Size > 64<<20 {
		return nil, j.err("open", key, withKind(ErrCorrupt, fmt.Errorf("index of %d bytes", info.Size)), "")
	}
	data, err := j.obs.GetBytes(ctx, key)
	if err != nil {
		return nil, j.classify("open", key, err)
	}
	var idx jsIndex
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, j.err("open", key, withKind(ErrCorrupt, err), "")
	}
	if idx.Version != jsIndexVersion {
		return nil, j.err("open", key, withKind(ErrCorrupt, fmt.Errorf("index version %d, this Cedana reads %d", idx.Version, jsIndexVersion)), "")
	}
	var sum int64
	for _, p := range idx.Parts {
		if p.Size < 0 || !strings.HasPrefix(p.Name, jsPartsPrefix) {
			return nil, j.err("open", key, withKind(ErrCorrupt, errors.New("bad part in index")), "")
		}
		sum += p.Size
	}
	if sum != idx.Size {
		return nil, j.err("open", key, withKind(ErrCorrupt, fmt.Errorf("parts add up to %d bytes, index says %d", sum, idx.Size)), "")
	}
	return &idx, nil
}

// Stat implements Backend.
func (j *JetStream) Stat(ctx context.Context, key string) (Info, error) {
	if err := CheckKey(key); err != nil {
		return Info{}, j.err("stat", key, err, "")
	}
	info, err := j.obs.GetInfo(ctx, key)
	if err != nil {
		return Info{}, j.classify("stat", key, err)
	}
	return j.info(info)
}

func (j *JetStream) info(info *jetstream.ObjectInfo) (Info, error) {
	if info.Metadata[metaIndex] == "" {
		return Info{}, j.err("stat", info.Name, withKind(ErrCorrupt, errors.New("not a Cedana index object")), "")
	}
	size, err := strconv.ParseInt(info.Metadata[metaSize], 10, 64)
	if err != nil {
		return Info{}, j.err("stat", info.Name, withKind(ErrCorrupt, err), "")
	}
	return Info{Key: info.Name, Size: size, ModTime: info.ModTime}, nil
}

// List implements Backend.
func (j *JetStream) List(ctx context.Context, prefix string) ([]Info, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, j.err("list", prefix, err, "")
	}
	all, err := j.obs.List(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, j.classify("list", "", err)
	}
	var out []Info
	for _, o := range all {
		if !strings.HasPrefix(o.Name, prefix) || CheckKey(o.Name) != nil || o.Metadata[metaIndex] == "" {
			continue
		}
		in, err := j.info(o)
		if err != nil {
			continue
		}
		out = append(out, in)
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Key < out[k].Key })
	return out, nil
}

// Delete implements Backend: the index first (the archive disappears at once), then its
// parts.
func (j *JetStream) Delete(ctx context.Context, key string) error {
	if err := CheckKey(key); err != nil {
		return j.err("delete", key, err, "")
	}
	idx, err := j.readIndex(ctx, key)
	if err != nil {
		if errors.Is(err, ErrNotExist) {
			return nil
		}
		if !errors.Is(err, ErrCorrupt) {
			return err
		}
	}
	if err := j.obs.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return j.classify("delete", key, err)
	}
	if idx != nil {
		j.deleteParts(ctx, idx.Parts)
	}
	return nil
}

// SweepParts deletes what writers killed mid-upload left, when older than olderThan:
// parts that no index references, and chunks that no object's info message references
// (the part a writer was publishing when it died has chunks but no info message yet). It
// returns how many parts and chunk sets it deleted.
func (j *JetStream) SweepParts(ctx context.Context, olderThan time.Duration) (int, error) {
	all, err := j.obs.List(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoObjectsFound) {
		return 0, j.classify("list", "", err)
	}
	live := map[string]bool{}
	for _, o := range all {
		if o.Metadata[metaIndex] != "" {
			live[o.Metadata[metaUpload]] = true
		}
	}
	n := 0
	referenced := map[string]bool{}
	for _, o := range all {
		if strings.HasPrefix(o.Name, jsPartsPrefix) && !live[o.Metadata[metaUpload]] && time.Since(o.ModTime) >= olderThan {
			if err := j.obs.Delete(ctx, o.Name); err == nil {
				n++
				continue
			}
		}
		referenced[o.NUID] = true
	}
	m, err := j.sweepChunks(ctx, referenced, olderThan)
	return n + m, err
}

// sweepChunks purges the chunk subjects of the object store whose NUID is not in
// referenced and whose last chunk is older than olderThan.
func (j *JetStream) sweepChunks(ctx context.Context, referenced map[string]bool, olderThan time.Duration) (int, error) {
	if j.js == nil {
		return 0, nil
	}
	s, err := j.js.Stream(ctx, fmt.Sprintf(jsObjStream, j.cfg.Bucket))
	if err != nil {
		return 0, j.classify("list", "", err)
	}
	prefix := fmt.Sprintf(jsObjChunkSubj, j.cfg.Bucket, "")
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return 0, j.classify("list", "", err)
	}
	n := 0
	for subj := range info.State.Subjects {
		if referenced[strings.TrimPrefix(subj, prefix)] {
			continue
		}
		last, err := s.GetLastMsgForSubject(ctx, subj)
		if err != nil || time.Since(last.Time) < olderThan {
			continue
		}
		if err := s.Purge(ctx, jetstream.WithPurgeSubject(subj)); err == nil {
			n++
		}
	}
	return n, nil
}

// redactServers drops passwords from a comma-separated list of server URLs.
func redactServers(urls string) string {
	var out []string
	for _, u := range strings.Split(urls, ",") {
		out = append(out, redactURL(strings.TrimSpace(u)))
	}
	return strings.Join(out, ",")
}
