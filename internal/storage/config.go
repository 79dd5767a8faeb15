package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Backend kinds (storage.backend).
const (
	KindLocal     = "local"     // the local checkpoint directory (today's behaviour)
	KindDir       = "dir"       // a shared mount: storage.dir.path
	KindS3        = "s3"        // an S3-compatible object store: storage.s3.*
	KindJetStream = "jetstream" // a NATS JetStream object store: storage.jetstream.*
)

// Config selects and configures a backend; it mirrors the storage section of the
// configuration file (the config package maps onto it).
type Config struct {
	Backend    string // local (default), dir, s3 or jetstream
	Dir        DirConfig
	S3         S3Config
	JetStream  JetStreamConfig
	Encryption EncryptionConfig
}

// DirConfig configures the dir backend.
type DirConfig struct {
	Path string // the shared directory; must exist
}

// EncryptionConfig configures encryption at rest.
type EncryptionConfig struct {
	// KeyFile is an age X25519 identity made by KeyGen (`cedana storage keygen FILE`).
	// When set, every archive written to a non-local backend is encrypted, and reading
	// one needs it.
	KeyFile string
}

// Open builds the backend cfg describes. localDir is the local checkpoint directory used
// by the local backend. Non-local backends are wrapped by Encrypted when a key file is
// configured; without one they refuse to open an encrypted object with ErrEncrypted
// instead of handing ciphertext to the archive reader. Close the result with CloseBackend.
func Open(ctx context.Context, cfg Config, localDir string) (Backend, error) {
	var b Backend
	var err error
	switch cfg.Backend {
	case "", KindLocal:
		return NewDir(KindLocal, localDir)
	case KindDir:
		b, err = NewDir(KindDir, cfg.Dir.Path)
	case KindS3:
		b, err = NewS3(ctx, cfg.S3)
	case KindJetStream:
		b, err = NewJetStream(ctx, cfg.JetStream)
	default:
		return nil, fmt.Errorf("storage.backend %q is not one of local, dir, s3, jetstream", cfg.Backend)
	}
	if err != nil {
		return nil, err
	}
	if cfg.Encryption.KeyFile == "" {
		return &plainOnly{Backend: b}, nil
	}
	key, err := LoadKey(cfg.Encryption.KeyFile)
	if err != nil {
		CloseBackend(b)
		return nil, &Error{Backend: b.Name(), Op: "open", Err: err, Hint: "fix storage.encryption.key_file"}
	}
	return NewEncrypted(b, key)
}

// CloseBackend releases what a backend holds (the NATS connection of jetstream).
func CloseBackend(b Backend) error {
	for b != nil {
		if c, ok := b.(io.Closer); ok {
			return c.Close()
		}
		switch w := b.(type) {
		case *plainOnly:
			b = w.Backend
		case Wrapper: // *Encrypted too
			b = w.Inner()
		default:
			return nil
		}
	}
	return nil
}

// plainOnly is a backend without a key: opening an encrypted object fails clearly.
type plainOnly struct{ Backend }

func (p *plainOnly) Open(ctx context.Context, key string) (Object, error) {
	obj, err := p.Backend.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	var magic [len(encMagic)]byte
	if n, _ := obj.ReadAt(magic[:], 0); n == len(magic) && string(magic[:]) == encMagic {
		obj.Close()
		return nil, &Error{Backend: p.Name(), Op: "open", Key: key, Err: ErrEncrypted,
			Hint: "set storage.encryption.key_file to the key it was written with"}
	}
	return obj, nil
}

// ParseURL turns a storage URL into a Config:
//
//	/path, file:///path                  dir backend on that directory
//	s3://bucket/prefix?endpoint=URL&region=R&path_style=true
//	                                     s3 backend (endpoint empty: AWS)
//	nats://host:port/bucket?replicas=N&create=true
//	                                     jetstream backend (user:password@ allowed)
//
// Query parameters other than those listed are an error.
func ParseURL(raw string) (Config, error) {
	if raw == "" {
		return Config{}, errors.New("empty storage URL")
	}
	if strings.HasPrefix(raw, "/") {
		return Config{Backend: KindDir, Dir: DirConfig{Path: filepath.Clean(raw)}}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Config{}, fmt.Errorf("storage URL: %w", errors.New("not a URL")) // url's message may quote a password
	}
	q := u.Query()
	take := func(name string) string { v := q.Get(name); q.Del(name); return v }
	takeBool := func(name string) (bool, error) {
		v := take(name)
		if v == "" {
			return false, nil
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("storage URL: %s=%q is not a boolean", name, v)
		}
		return b, nil
	}
	var cfg Config
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return Config{}, fmt.Errorf("storage URL: file URLs name a local path (file:///path), not host %q", u.Host)
		}
		if u.Path == "" {
			return Config{}, errors.New("storage URL: file URL without a path")
		}
		cfg = Config{Backend: KindDir, Dir: DirConfig{Path: filepath.Clean(u.Path)}}
	case "s3":
		if u.Host == "" {
			return Config{}, errors.New("storage URL: s3://BUCKET/PREFIX needs a bucket")
		}
		if u.User != nil {
			return Config{}, errors.New("storage URL: put S3 credentials in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials, not in the URL")
		}
		ps, err := takeBool("path_style")
		if err != nil {
			return Config{}, err
		}
		cfg = Config{Backend: KindS3, S3: S3Config{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/"),
			Endpoint: take("endpoint"), Region: take("region"), PathStyle: ps}}
	case "nats":
		bucket := strings.Trim(u.Path, "/")
		if bucket == "" || strings.Contains(bucket, "/") {
			return Config{}, errors.New("storage URL: nats://HOST:PORT/BUCKET needs one object store name")
		}
		create, err := takeBool("create")
		if err != nil {
			return Config{}, err
		}
		rep := 0
		if v := take("replicas"); v != "" {
			if rep, err = strconv.Atoi(v); err != nil || rep < 1 || rep > 5 {
				return Config{}, fmt.Errorf("storage URL: replicas=%q must be 1 to 5", v)
			}
		}
		server := url.URL{Scheme: "nats", User: u.User, Host: u.Host}
		cfg = Config{Backend: KindJetStream, JetStream: JetStreamConfig{URL: server.String(), Bucket: bucket,
			CreateBucket: create, Replicas: rep}}
	default:
		return Config{}, fmt.Errorf("storage URL: scheme %q is not one of file, s3, nats (or an absolute path)", u.Scheme)
	}
	if len(q) > 0 {
		var names []string
		for k := range q {
			names = append(names, k)
		}
		return Config{}, fmt.Errorf("storage URL: unknown parameter(s) %s", strings.Join(names, ", "))
	}
	return cfg, nil
}

// Sweep removes what interrupted uploads left behind in b, when older than olderThan:
// temporary files (dir, local), incomplete multipart uploads (s3), unreferenced parts
// (jetstream). It returns how many it removed. Run it when the daemon starts.
func Sweep(ctx context.Context, b Backend, olderThan time.Duration) (int, error) {
	switch v := unwrap(b).(type) {
	case *Dir:
		return v.SweepTemp(olderThan)
	case *S3:
		return v.AbortIncomplete(ctx, olderThan)
	case *JetStream:
		return v.SweepParts(ctx, olderThan)
	default:
		return 0, nil
	}
}
