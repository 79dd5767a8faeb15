package main

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cedana/cedana/internal/config"
	"github.com/cedana/cedana/internal/storage"
)

// Every storage.* setting reaches the storage package's Config: set each
// from the environment, as a user would, and find it mapped.
func TestStorageConfigMapsEverySetting(t *testing.T) {
	env := []string{
		"CEDANA_STORAGE_BACKEND=s3", "CEDANA_STORAGE_DIR_PATH=/d",
		"CEDANA_STORAGE_S3_ENDPOINT=http://e:1", "CEDANA_STORAGE_S3_BUCKET=b", "CEDANA_STORAGE_S3_REGION=r",
		"CEDANA_STORAGE_S3_PREFIX=p", "CEDANA_STORAGE_S3_PATH_STYLE=true",
		"CEDANA_STORAGE_JETSTREAM_URL=nats://h:1", "CEDANA_STORAGE_JETSTREAM_CREDS=/c",
		"CEDANA_STORAGE_JETSTREAM_BUCKET=o", "CEDANA_STORAGE_JETSTREAM_CREATE_BUCKET=true",
		"CEDANA_STORAGE_JETSTREAM_REPLICAS=3", "CEDANA_STORAGE_ENCRYPTION_KEY_FILE=/k",
		"CEDANA_STORAGE_DEDUP=false", // the daemon's (jobs.Config.Dedup), not the storage package's
	}
	n := 0
	for _, s := range config.Settings() {
		if len(s.Key) > 8 && s.Key[:8] == "storage." {
			n++
		}
	}
	if n != len(env) {
		t.Fatalf("%d storage settings, the test sets %d: map and test the new ones", n, len(env))
	}
	l, err := config.LoadFrom(nil, env)
	if err != nil {
		t.Fatal(err)
	}
	if l.Config.Storage.Dedup {
		t.Fatal("CEDANA_STORAGE_DEDUP=false did not turn deduplication off")
	}
	got := storageConfig(&l.Config)
	want := storage.Config{Backend: "s3", Dir: storage.DirConfig{Path: "/d"},
		S3:         storage.S3Config{Endpoint: "http://e:1", Bucket: "b", Region: "r", Prefix: "p", PathStyle: true},
		JetStream:  storage.JetStreamConfig{URL: "nats://h:1", CredsFile: "/c", Bucket: "o", CreateBucket: true, Replicas: 3},
		Encryption: storage.EncryptionConfig{KeyFile: "/k"}}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Fatalf("mapped\n%+v\nwant\n%+v", got, want)
	}
	if _, err := config.LoadFrom(nil, []string{"CEDANA_STORAGE_BACKEND=ftp"}); err == nil {
		t.Fatal("storage.backend=ftp accepted")
	}
}

// Storage errors map to exit codes in one place.
func TestStorageExitCodes(t *testing.T) {
	wrap := func(kind error) error {
		return fmt.Errorf("checkpoint failed: %w", &storage.Error{Backend: "s3://b/", Op: "write", Err: kind})
	}
	for _, tc := range []struct {
		err  error
		want int
	}{
		{wrap(storage.ErrAccess), ExitStorage}, {wrap(storage.ErrNoBucket), ExitStorage},
		{wrap(storage.ErrUnreachable), ExitStorage}, {wrap(storage.ErrNoSpace), ExitStorage},
		{wrap(storage.ErrWrongKey), ExitStorage}, {wrap(storage.ErrEncrypted), ExitStorage},
		{wrap(storage.ErrNoKey), ExitStorage}, {wrap(storage.ErrCorrupt), ExitArchive},
		{wrap(storage.ErrNotExist), ExitInput}, {errors.New("other"), ExitFailed},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("%v: exit %d, want %d", tc.err, got, tc.want)
		}
	}
}
