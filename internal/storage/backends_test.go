package storage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

const testBig = 2*minPartSize + 12345 // several S3 parts, JetStream parts and cipher chunks

func TestContractDir(t *testing.T) {
	runContract(t, spec{Kind: "dir", Dir: t.TempDir()}, testBig)
}

func TestContractDirEncrypted(t *testing.T) {
	kf, _ := testKey(t)
	runContract(t, spec{Kind: "dir", Dir: t.TempDir(), KeyFile: kf}, testBig)
}

func TestContractS3(t *testing.T) {
	s := startVersity(t, "ckpt")
	runContract(t, spec{Kind: "s3", S3: s.s3Config("ckpt", "cedana/test")}, testBig)
}

func TestContractS3Encrypted(t *testing.T) {
	s := startVersity(t, "ckpt")
	kf, _ := testKey(t)
	runContract(t, spec{Kind: "s3", S3: s.s3Config("ckpt", ""), KeyFile: kf}, testBig)
}

func jsConfig(s *testServer, bucket string) JetStreamConfig {
	return JetStreamConfig{URL: s.natsURL(), Bucket: bucket, CreateBucket: true, PartSize: 1 << 20}
}

func TestContractJetStream(t *testing.T) {
	s := startNATS(t)
	runContract(t, spec{Kind: "jetstream", JetStream: jsConfig(s, "ckpt")}, testBig)
}

func TestContractJetStreamEncrypted(t *testing.T) {
	s := startNATS(t)
	kf, _ := testKey(t)
	runContract(t, spec{Kind: "jetstream", JetStream: jsConfig(s, "ckpt"), KeyFile: kf}, testBig)
}

// wantErr checks an error's kind, that it names the backend and the fix, and shows no
// secret.
func wantErr(t *testing.T, err, kind error, mustContain ...string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("err = %v, want %v", err, kind)
	}
	noSecrets(t, err)
	for _, s := range mustContain {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("error %q does not mention %q", err, s)
		}
	}
}

func TestS3Failures(t *testing.T) {
	s := startVersity(t, "ckpt")
	ctx := context.Background()

	cfg := s.s3Config("ckpt", "")
	cfg.SecretKey = "wrong-" + testSecret
	_, err := NewS3(ctx, cfg)
	wantErr(t, err, ErrAccess, "s3://ckpt/", "AWS_ACCESS_KEY_ID")

	cfg = s.s3Config("nosuchbucket", "")
	_, err = NewS3(ctx, cfg)
	wantErr(t, err, ErrNoBucket, "s3://nosuchbucket/", "storage.s3.bucket")

	cfg = s.s3Config("ckpt", "")
	cfg.Endpoint = "http://127.0.0.1:" + itoa(freePort(t))
	start := time.Now()
	_, err = NewS3(ctx, cfg)
	wantErr(t, err, ErrUnreachable, "s3://ckpt/", "storage.s3.endpoint")
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("an unreachable endpoint took %v to report", d)
	}

	// Credentials from the environment, the way AWS tools take them.
	cfg = s.s3Config("ckpt", "")
	cfg.AccessKey, cfg.SecretKey = "", ""
	t.Setenv("AWS_ACCESS_KEY_ID", testAccess)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testSecret)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	if _, err := NewS3(ctx, cfg); err != nil {
		t.Fatalf("credentials from AWS_* variables: %v", err)
	}
	// ... and from the shared credentials file.
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	cf := filepath.Join(t.TempDir(), "credentials")
	os.WriteFile(cf, []byte("[default]\naws_access_key_id = "+testAccess+"\naws_secret_access_key = "+testSecret+"\n"), 0o600)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", cf)
	if _, err := NewS3(ctx, cfg); err != nil {
		t.Fatalf("credentials from the shared credentials file: %v", err)
	}

	// The server goes away during use.
	b, err := NewS3(ctx, s.s3Config("ckpt", ""))
	if err != nil {
		t.Fatal(err)
	}
	s.stop()
	_, err = b.List(ctx, "")
	wantErr(t, err, ErrUnreachable, "s3://ckpt/")
}

func TestJetStreamFailures(t *testing.T) {
	s := startNATS(t)
	ctx := context.Background()

	cfg := jsConfig(s, "ckpt")
	cfg.URL = "nats://" + testNATSUser + ":wrong" + testNATSPass + "@" + s.addr
	_, err := NewJetStream(ctx, cfg)
	wantErr(t, err, ErrAccess, "jetstream://ckpt", "storage.jetstream")

	cfg = jsConfig(s, "missing")
	cfg.CreateBucket = false
	_, err = NewJetStream(ctx, cfg)
	wantErr(t, err, ErrNoBucket, "jetstream://missing", "nats object add missing")

	cfg = jsConfig(s, "ckpt")
	cfg.URL = "nats://127.0.0.1:" + itoa(freePort(t))
	_, err = NewJetStream(ctx, cfg)
	wantErr(t, err, ErrUnreachable, "jetstream://ckpt", "storage.jetstream.url")

	// A full object store: a 2 MiB limit and a 4 MiB archive.
	b, err := NewJetStream(ctx, jsConfig(s, "ckpt"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	small, err := newSmallObjectStore(ctx, b, "small", 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	err = Put(ctx, small, "big", strings.NewReader(strings.Repeat("x", 4<<20)))
	wantErr(t, err, ErrNoSpace, "jetstream://small")
	l, err := small.List(ctx, "")
	if err != nil || len(l) != 0 {
		t.Fatalf("after a failed upload List = %v, %v", l, err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// newSmallObjectStore creates an object store limited to maxBytes on b's connection.
func newSmallObjectStore(ctx context.Context, b *JetStream, name string, maxBytes int64) (*JetStream, error) {
	js, err := jetstream.New(b.nc)
	if err != nil {
		return nil, err
	}
	obs, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: name, MaxBytes: maxBytes})
	if err != nil {
		return nil, err
	}
	cfg := b.cfg
	cfg.Bucket = name
	return &JetStream{cfg: cfg, nc: b.nc, js: js, obs: obs, name: "jetstream://" + name}, nil
}

// TestJetStreamNoLeftovers checks what the object store's stream holds after an archive
// is replaced, an upload is aborted in the middle of a part, a commit is cancelled, and a
// writer stops mid-part (as a killed one does) followed by a Sweep: the chunks of live
// objects and nothing else. It also reads a part with the object store's own Get, which
// checks the digest the writer computed.
func TestJetStreamNoLeftovers(t *testing.T) {
	s := startNATS(t)
	ctx := context.Background()
	b, err := NewJetStream(ctx, jsConfig(s, "gc")) // 1 MiB parts
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	size := 3<<20 + 12345
	if err := Put(ctx, b, "a", bytes.NewReader(randBytes(size, 1))); err != nil {
		t.Fatal(err)
	}
	data := randBytes(size, 2)
	if err := Put(ctx, b, "a", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	midPart := 2<<20 + 700<<10 // two parts, a chunk of a third and a piece of the next chunk
	w, err := b.Create(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if err := writeInPieces(w, randBytes(midPart, 3)); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	w, err = b.Create(cctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	if err := writeInPieces(w, randBytes(midPart, 4)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := w.Commit(); err == nil {
		t.Fatal("Commit with a cancelled context succeeded")
	}
	// A writer that stops without Abort or Commit, once its publishes have landed: two
	// parts (two chunks and an info message each) and one chunk of a third.
	st, err := b.js.Stream(ctx, "OBJ_gc")
	if err != nil {
		t.Fatal(err)
	}
	before, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w, err = b.Create(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	if err := writeInPieces(w, randBytes(midPart, 5)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		now, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if now.State.Msgs == before.State.Msgs+7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stopped writer's messages: %d stored, want 7", now.State.Msgs-before.State.Msgs)
		}
	}
	if n, err := Sweep(ctx, b, 0); err != nil || n != 3 {
		t.Fatalf("Sweep removed %d, %v; want 3 (two parts and the chunks of a third)", n, err)
	}

	idx, err := b.readIndex(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"a": true}
	for _, p := range idx.Parts {
		want[p.Name] = true
	}
	objs, err := b.obs.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nuids := map[string]bool{}
	for _, o := range objs {
		if !want[o.Name] {
			t.Errorf("object %s left in the store", o.Name)
		}
		delete(want, o.Name)
		nuids[o.NUID] = true
	}
	if len(want) != 0 {
		t.Errorf("objects missing: %v", want)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter("$O.gc.C.>"))
	if err != nil {
		t.Fatal(err)
	}
	for subj := range info.State.Subjects {
		if !nuids[strings.TrimPrefix(subj, "$O.gc.C.")] {
			t.Errorf("chunks %s belong to no object", subj)
		}
	}

	got, err := b.obs.GetBytes(ctx, idx.Parts[1].Name)
	if err != nil || !bytes.Equal(got, data[1<<20:2<<20]) {
		t.Fatalf("the object store's Get of part 1: %d bytes, %v", len(got), err)
	}
	if got, err := ReadAll(ctx, b, "a"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
}
