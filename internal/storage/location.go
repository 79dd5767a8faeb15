package storage

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
)

// Location is the address of the object key in b, for records and messages, and that
// Locate resolves back: a file path for dir and local, "s3://bucket/prefix/key" for s3,
// "nats://host:port/bucket/key" for jetstream (without user or password). Endpoints and
// credentials are not part of it: Locate takes them from the configuration.
func Location(b Backend, key string) string {
	switch v := unwrap(b).(type) {
	case *Dir:
		return v.Path(key)
	case *S3:
		return "s3://" + v.cfg.Bucket + "/" + v.prefix + key
	case *JetStream:
		server := strings.TrimSpace(strings.Split(v.cfg.URL, ",")[0])
		if u, err := url.Parse(server); err == nil {
			u.User = nil
			server = u.String()
		}
		return strings.TrimSuffix(server, "/") + "/" + v.cfg.Bucket + "/" + key
	default:
		return v.Name() + "/" + key
	}
}

// KeyOf returns the key of location loc in b, when loc is a Location of b.
func KeyOf(b Backend, loc string) (string, bool) {
	root := Location(b, "")
	if _, ok := unwrap(b).(*Dir); ok {
		root = strings.TrimSuffix(root, "/") + "/"
	}
	key, ok := strings.CutPrefix(loc, root)
	if !ok || CheckKey(key) != nil {
		return "", false
	}
	return key, true
}

// Wrapper is a Backend that stores its objects in another one (encryption,
// deduplication); Location and KeyOf see through it.
type Wrapper interface {
	Backend
	Inner() Backend
}

// IsLocal reports whether b keeps its objects in files on this machine
// (local or dir, possibly wrapped).
func IsLocal(b Backend) bool {
	_, ok := unwrap(b).(*Dir)
	return ok
}

// LocalPath returns the file holding key when b keeps it in a plain file
// on this machine (local or dir, not encrypted).
func LocalPath(b Backend, key string) (string, bool) {
	for {
		switch v := b.(type) {
		case *Dir:
			return v.Path(key), true
		case *plainOnly:
			b = v.Backend
		case *Encrypted:
			return "", false
		case Wrapper:
			b = v.Inner()
		default:
			return "", false
		}
	}
}

// unwrap returns the backend at the bottom of b's wrappers (encryption,
// deduplication, plain-only).
func unwrap(b Backend) Backend {
	for {
		switch v := b.(type) {
		case *plainOnly:
			b = v.Backend
		case Wrapper: // *Encrypted too
			b = v.Inner()
		default:
			return b
		}
	}
}

// IsURL reports whether s names an object store (s3://, nats://) or a file:// URL rather
// than a plain path.
func IsURL(s string) bool {
	return strings.HasPrefix(s, "s3://") || strings.HasPrefix(s, "nats://") || strings.HasPrefix(s, "file://")
}

// Destination resolves a place to write archives — a directory path, file:///dir,
// s3://bucket/prefix or nats://host:port/bucket, as ParseURL reads them — into a Config,
// taking what the URL does not say from base (the configured storage section): the S3
// endpoint, region and addressing, the NATS credentials, and the encryption key.
func Destination(raw string, base Config) (Config, error) {
	cfg, err := ParseURL(raw)
	if err != nil {
		return Config{}, err
	}
	return inherit(cfg, base, raw), nil
}

// inherit fills what a URL left unsaid from base.
func inherit(cfg, base Config, raw string) Config {
	switch cfg.Backend {
	case KindS3:
		if cfg.S3.Endpoint == "" {
			cfg.S3.Endpoint = base.S3.Endpoint
			if !strings.Contains(raw, "path_style=") {
				cfg.S3.PathStyle = base.S3.PathStyle
			}
		}
		if cfg.S3.Region == "" {
			cfg.S3.Region = base.S3.Region
		}
		cfg.S3.AccessKey, cfg.S3.SecretKey = base.S3.AccessKey, base.S3.SecretKey
	case KindJetStream:
		if cfg.JetStream.CredsFile == "" {
			cfg.JetStream.CredsFile = base.JetStream.CredsFile
		}
		if u, err := url.Parse(cfg.JetStream.URL); err == nil && u.User == nil {
			// Same cluster as configured: use its user and password.
			if bu, err := url.Parse(strings.TrimSpace(strings.Split(base.JetStream.URL, ",")[0])); err == nil && bu.User != nil {
				u.User = bu.User
				cfg.JetStream.URL = u.String()
			}
		}
		if cfg.JetStream.Replicas == 0 {
			cfg.JetStream.Replicas = base.JetStream.Replicas
		}
	}
	cfg.Encryption = base.Encryption
	return cfg
}

// Locate resolves the location of one archive — a file path, file:///path,
// s3://bucket/key (query parameters as ParseURL) or nats://host:port/bucket/key — into a
// Config for the store that holds it and the object's key there. What the location does
// not say comes from base, as for Destination.
func Locate(raw string, base Config) (Config, string, error) {
	if !IsURL(raw) {
		p, err := filepath.Abs(raw)
		if err != nil {
			return Config{}, "", fmt.Errorf("archive path %q: %w", raw, err)
		}
		return inherit(Config{Backend: KindDir, Dir: DirConfig{Path: filepath.Dir(p)}}, base, raw), filepath.Base(p), nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Config{}, "", errors.New("archive location: not a URL")
	}
	path := strings.Trim(u.Path, "/")
	var dirURL, key string
	switch u.Scheme {
	case "file":
		dir, base := filepath.Split(filepath.Clean(u.Path))
		dirURL, key = "file://"+dir, base
	case "s3":
		dirURL, key = "s3://"+u.Host, path
		if u.RawQuery != "" {
			dirURL += "?" + u.RawQuery
		}
	case "nats":
		bucket, k, _ := strings.Cut(path, "/")
		server := url.URL{Scheme: "nats", User: u.User, Host: u.Host, Path: "/" + bucket, RawQuery: u.RawQuery}
		dirURL, key = server.String(), k
	}
	if err := CheckKey(key); err != nil {
		return Config{}, "", fmt.Errorf("archive location %s: it must name one archive, e.g. s3://bucket/dir/name.zip or nats://host:4222/bucket/name.zip: %w", redactURL(raw), err)
	}
	cfg, err := Destination(dirURL, base)
	if err != nil {
		return Config{}, "", err
	}
	return cfg, key, nil
}
