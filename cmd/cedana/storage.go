package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/cedana/cedana/internal/chunks"
	"github.com/cedana/cedana/internal/config"
	"github.com/cedana/cedana/internal/storage"
)

// storageConfig maps the configuration's storage section onto the storage
// package's Config. S3 credentials are never part of it: the storage
// package takes them from the environment or the shared credentials file.
func storageConfig(c *config.Config) storage.Config {
	s := c.Storage
	return storage.Config{
		Backend: s.Backend,
		Dir:     storage.DirConfig{Path: s.Dir.Path},
		S3: storage.S3Config{Endpoint: s.S3.Endpoint, Bucket: s.S3.Bucket, Region: s.S3.Region,
			Prefix: s.S3.Prefix, PathStyle: s.S3.PathStyle},
		JetStream: storage.JetStreamConfig{URL: s.JetStream.URL, CredsFile: s.JetStream.Creds,
			Bucket: s.JetStream.Bucket, CreateBucket: s.JetStream.CreateBucket, Replicas: s.JetStream.Replicas},
		Encryption: storage.EncryptionConfig{KeyFile: s.Encryption.KeyFile},
	}
}

// configuredStorage opens the configured backend; nil when it is local
// (archives are then plain files, as without a storage section).
func configuredStorage(ctx context.Context, c *config.Config) (storage.Backend, error) {
	sc := storageConfig(c)
	if sc.Backend == "" || sc.Backend == storage.KindLocal {
		return nil, nil
	}
	return storage.Open(ctx, sc, "")
}

// storageAt opens the backend holding the archive named by arg — an
// s3:// or nats:// URL, file:///path, or a local path of an encrypted
// archive or of a deduplicated checkpoint — and returns it with the
// archive's key. For a plain local archive it returns a nil backend: the
// archive is read as a file. Backends are wrapped in chunks.Dedup, which
// reads deduplicated checkpoints (a daemon's job checkpoints) and plain
// archives alike.
func storageAt(ctx context.Context, c *config.Config, arg string) (storage.Backend, string, error) {
	if !storage.IsURL(arg) {
		if _, err := os.Stat(arg); err != nil {
			return nil, "", fmt.Errorf("%w: %v", os.ErrNotExist, err)
		}
		if chunks.IsCheckpointFile(arg) {
			abs, err := filepath.Abs(arg)
			if err != nil {
				return nil, "", err
			}
			dir, err := storage.NewDir(storage.KindLocal, filepath.Dir(abs))
			if err != nil {
				return nil, "", err
			}
			return chunks.New(dir), filepath.Base(abs), nil
		}
		if !encryptedFile(arg) {
			return nil, "", nil
		}
	}
	sc, key, err := storage.Locate(arg, storageConfig(c))
	if err != nil {
		return nil, "", usageError{err.Error()}
	}
	b, err := storage.Open(ctx, sc, "")
	if err != nil {
		return nil, "", err
	}
	return chunks.New(b), key, nil
}

// encryptedFile reports whether the file at path is an encrypted archive.
func encryptedFile(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var magic [8]byte
	n, _ := f.ReadAt(magic[:], 0)
	return bytes.Equal(magic[:n], []byte(storage.EncryptedMagic))
}

// daemonStorage opens the configured backend for the daemon's jobs and
// removes what writers killed more than an hour ago left in it (temporary
// files, incomplete multipart uploads, unreferenced parts). A store that
// cannot be opened stops the daemon with the reason and the fix: jobs
// would otherwise fail at their first checkpoint.
func daemonStorage(ctx context.Context, c *config.Config, log *slog.Logger) (storage.Backend, error) {
	b, err := configuredStorage(ctx, c)
	if err != nil || b == nil {
		return nil, err
	}
	log.Info("checkpoints go to "+b.Name(), "storage", b.Name())
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if n, err := storage.Sweep(sctx, b, time.Hour); err != nil {
		log.Warn("could not sweep leftovers of interrupted uploads", "storage", b.Name(), "err", err)
	} else if n > 0 {
		log.Info("removed leftovers of interrupted uploads", "storage", b.Name(), "count", n)
	}
	return b, nil
}

func newStorageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "storage", Short: "Manage where checkpoints are stored (see storage.* in the configuration)"}
	keygen := &cobra.Command{
		Use:   "keygen FILE",
		Short: "Create an encryption key for checkpoints at rest (mode 0600; never overwrites)",
		Long: `Create a new age X25519 key in FILE with mode 0600 and print its public
half. Set storage.encryption.key_file to FILE to encrypt every archive
written to a non-local backend (dir, s3, jetstream) with it; restores need
the same file. An existing FILE is never overwritten: archives encrypted
with a lost key cannot be restored. Keep a copy somewhere safe.`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			pub, err := storage.KeyGen(args[0])
			if err != nil {
				return err
			}
			fmt.Println(pub)
			fmt.Fprintf(os.Stderr, "Created %s (mode 0600). Set storage.encryption.key_file=%s (or CEDANA_STORAGE_ENCRYPTION_KEY_FILE) to use it, and keep a copy: without it, no archive it encrypted can be restored.\n", args[0], args[0])
			return nil
		},
	}
	cmd.AddCommand(keygen)
	return cmd
}
