package store

import (
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// A migration brings the bolt store from schema version version-1 to
// version. Open applies every migration newer than the file's version in one
// transaction, so a crash mid-way leaves the file at its old version.
type migration struct {
	version int
	name    string
	migrate func(tx *bolt.Tx) error
}

// migrations, in order. Append only: a released migration never changes.
// migrations[i].version must be i+1.
var migrations = []migration{
	{version: 1, name: "create buckets", migrate: createBucketsV1},
}

// SchemaVersion is the newest schema this build reads and writes: the
// version of the last migration (a test checks that they agree).
const SchemaVersion = 1

// SchemaError says a store file's schema is newer than this build knows.
// It matches ErrSchemaTooNew.
type SchemaError struct {
	Path      string // the store file
	Version   int    // the file's schema version
	Supported int    // SchemaVersion of this build
}

func (e *SchemaError) Error() string {
	return fmt.Sprintf("state store %s has schema version %d but this cedana supports up to %d: "+
		"it was written by a newer cedana; upgrade cedana or use a different state file",
		e.Path, e.Version, e.Supported)
}

// Is makes errors.Is(err, ErrSchemaTooNew) true.
func (e *SchemaError) Is(target error) bool { return target == ErrSchemaTooNew }

func createBucketsV1(tx *bolt.Tx) error {
	for _, name := range [][]byte{
		bucketMeta, bucketJobs, bucketJobNames,
		bucketJobCheckpoints, bucketCheckpointJobs, bucketEvents,
	} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return nil
}

// readSchemaVersion returns the file's schema version; 0 for a new file.
func readSchemaVersion(tx *bolt.Tx) (int, error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return 0, nil
	}
	v := meta.Get(keySchemaVersion)
	if v == nil {
		return 0, nil
	}
	n, err := strconv.Atoi(string(v))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("corrupt schema version %q", v)
	}
	return n, nil
}

// migrate brings the store in tx up to SchemaVersion.
func migrate(tx *bolt.Tx, path string) error {
	v, err := readSchemaVersion(tx)
	if err != nil {
		return err
	}
	if v > SchemaVersion {
		return &SchemaError{Path: path, Version: v, Supported: SchemaVersion}
	}
	if v == SchemaVersion {
		return nil
	}
	for _, m := range migrations[v:] {
		if err := m.migrate(tx); err != nil {
			return fmt.Errorf("migrate to schema version %d (%s): %w", m.version, m.name, err)
		}
	}
	// meta exists from version 1 on.
	return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte(strconv.Itoa(SchemaVersion)))
}
