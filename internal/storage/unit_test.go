package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestMemoryAndEncryptedMemory(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	_, key := testKey(t)
	e, err := NewEncrypted(m, key)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range []Backend{m, e} {
		key := []string{"plain/b", "a/b"}[i]
		data := randBytes(3<<20+5, 1)
		w, err := b.Create(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeInPieces(w, data); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Stat(ctx, key); !errors.Is(err, ErrNotExist) {
			t.Fatalf("%s: visible before Commit: %v", b.Name(), err)
		}
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		got, err := ReadAll(ctx, b, key)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: round trip: %v", b.Name(), err)
		}
	}
	// A byte flipped in the store is caught.
	if !m.Corrupt("a/b", 2<<20) {
		t.Fatal("Corrupt found nothing")
	}
	if _, err := ReadAll(ctx, e, "a/b"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("corrupted: %v, want ErrCorrupt", err)
	}
	// A failing inner write aborts the whole upload.
	m.Fail = func(op, key string) error {
		if op == "write" && key == "c" {
			return ErrNoSpace
		}
		return nil
	}
	err = Put(ctx, e, "c", bytes.NewReader(randBytes(4<<20, 2)))
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("inner write failure: %v, want ErrNoSpace", err)
	}
	if _, err := m.Stat(ctx, "c"); !errors.Is(err, ErrNotExist) {
		t.Fatalf("a failed upload is visible: %v", err)
	}
}

func TestKeyGenAndLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "k")
	pub, err := KeyGen(p)
	if err != nil || !strings.HasPrefix(pub, "age1") {
		t.Fatalf("KeyGen = %q, %v", pub, err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %o, want 600", st.Mode().Perm())
	}
	before, _ := os.ReadFile(p)
	if _, err := KeyGen(p); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second KeyGen on the same file: %v", err)
	}
	if after, _ := os.ReadFile(p); !bytes.Equal(before, after) {
		t.Fatal("KeyGen changed an existing key file")
	}
	k, err := LoadKey(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%+v", k), fmt.Sprintf("%#v", k), k.String()} {
		if strings.Contains(s, "AGE-SECRET-KEY") || !strings.Contains(s, pub) {
			t.Fatalf("a formatted key shows the secret or not the public key: %s", s)
		}
	}
	if _, err := LoadKey(filepath.Join(dir, "missing")); !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), "cedana storage keygen") {
		t.Fatalf("missing key file: %v", err)
	}
	os.Chmod(p, 0o644)
	if _, err := LoadKey(p); !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key file: %v", err)
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("AGE-SECRET-KEY-1NOTAKEY\n"), 0o600)
	if _, err := LoadKey(bad); !errors.Is(err, ErrNoKey) || strings.Contains(err.Error(), "NOTAKEY") {
		t.Fatalf("bad key file: %v", err)
	}
}

func TestParseURL(t *testing.T) {
	cases := []struct {
		in   string
		want Config
		err  string
	}{
		{in: "/mnt/ckpt/", want: Config{Backend: KindDir, Dir: DirConfig{Path: "/mnt/ckpt"}}},
		{in: "file:///mnt/ckpt", want: Config{Backend: KindDir, Dir: DirConfig{Path: "/mnt/ckpt"}}},
		{in: "s3://bkt/some/prefix/", want: Config{Backend: KindS3, S3: S3Config{Bucket: "bkt", Prefix: "some/prefix"}}},
		{in: "s3://bkt?endpoint=http://127.0.0.1:7070&region=eu-west-1&path_style=true",
			want: Config{Backend: KindS3, S3: S3Config{Bucket: "bkt", Endpoint: "http://127.0.0.1:7070", Region: "eu-west-1", PathStyle: true}}},
		{in: "nats://u:p@127.0.0.1:4222/ckpt?replicas=3&create=true",
			want: Config{Backend: KindJetStream, JetStream: JetStreamConfig{URL: "nats://u:p@127.0.0.1:4222", Bucket: "ckpt", Replicas: 3, CreateBucket: true}}},
		{in: "", err: "empty"},
		{in: "s3:///prefix", err: "needs a bucket"},
		{in: "s3://AKIA:secret@bkt/p", err: "not in the URL"},
		{in: "s3://bkt?colour=blue", err: "unknown parameter"},
		{in: "s3://bkt?path_style=maybe", err: "not a boolean"},
		{in: "nats://h:4222", err: "needs one object store"},
		{in: "nats://h:4222/b?replicas=9", err: "1 to 5"},
		{in: "file://host/x", err: "local path"},
		{in: "ftp://x/y", err: "not one of"},
	}
	for _, c := range cases {
		got, err := ParseURL(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseURL(%q) = %v, want error with %q", c.in, err, c.err)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("ParseURL(%q) error shows the secret: %v", c.in, err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

func TestOpenConfig(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	kf, _ := testKey(t)
	enc, err := Open(ctx, Config{Backend: KindDir, Dir: DirConfig{Path: dir}, Encryption: EncryptionConfig{KeyFile: kf}}, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := enc.(*Encrypted); !ok {
		t.Fatalf("a key file did not give an encrypted backend: %T", enc)
	}
	if err := Put(ctx, enc, "x", strings.NewReader("secret state")); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "x"))
	if bytes.Contains(raw, []byte("secret state")) {
		t.Fatal("stored in clear")
	}
	plain, err := Open(ctx, Config{Backend: KindDir, Dir: DirConfig{Path: dir}}, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Open(ctx, "x"); !errors.Is(err, ErrEncrypted) || !strings.Contains(err.Error(), "storage.encryption.key_file") {
		t.Fatalf("encrypted object without a key: %v", err)
	}
	if _, err := Open(ctx, Config{Backend: KindDir, Dir: DirConfig{Path: dir}, Encryption: EncryptionConfig{KeyFile: kf + ".gone"}}, ""); !errors.Is(err, ErrNoKey) {
		t.Fatalf("missing key file: %v", err)
	}
	if _, err := Open(ctx, Config{Backend: "ftp"}, ""); err == nil {
		t.Fatal("unknown backend accepted")
	}
	local, err := Open(ctx, Config{}, dir)
	if err != nil || !strings.HasPrefix(local.Name(), "local:") {
		t.Fatalf("default backend: %v, %v", local, err)
	}
}

func TestDirFailures(t *testing.T) {
	ctx := context.Background()
	_, err := NewDir(KindDir, filepath.Join(t.TempDir(), "gone"))
	wantErr(t, err, ErrNoBucket, "dir:", "storage.dir.path")

	// A full file system: a small tmpfs (needs root and CAP_SYS_ADMIN).
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill (%v: %s); the full-disk case is not tested here", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	b, err := NewDir(KindDir, mnt)
	if err != nil {
		t.Fatal(err)
	}
	err = Put(ctx, b, "big", bytes.NewReader(make([]byte, 8<<20)))
	wantErr(t, err, ErrNoSpace, "dir:"+mnt, "free space")
	if l, err := b.List(ctx, ""); err != nil || len(l) != 0 {
		t.Fatalf("after a failed upload List = %v, %v", l, err)
	}
	if ents, _ := os.ReadDir(mnt); len(ents) != 0 {
		t.Fatalf("a failed upload left %d files", len(ents))
	}
}

// readsCounted counts the reads (ReadAt, Stream) made on the objects of a Memory.
type readsCounted struct {
	*Memory
	reads *int
}

func (b readsCounted) Open(ctx context.Context, key string) (Object, error) {
	o, err := b.Memory.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	return readCountedObject{o, b.reads}, nil
}

type readCountedObject struct {
	Object
	reads *int
}

func (o readCountedObject) ReadAt(p []byte, off int64) (int, error) {
	*o.reads++
	return o.Object.ReadAt(p, off)
}

func (o readCountedObject) Stream(off, n int64) (io.ReadCloser, error) {
	*o.reads++
	return o.Object.Stream(off, n)
}

// Opening an encrypted object costs two reads of the store (on S3, two
// requests): its header and its last chunk, which an archive's index
// lies in; reads and streams of that chunk are then served without
// another.
func TestEncryptedOpenReads(t *testing.T) {
	ctx := context.Background()
	reads := 0
	inner := readsCounted{NewMemory(), &reads}
	_, key := testKey(t)
	e, err := NewEncrypted(inner, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetChunkSize(minEncChunk); err != nil {
		t.Fatal(err)
	}
	cs := minEncChunk
	for _, size := range []int{1, cs - 1, cs, cs + 1, 5*cs + 123, 6 * cs} {
		data := randBytes(size, uint64(size))
		if err := Put(ctx, e, "obj", bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		reads = 0
		obj, err := e.Open(ctx, "obj")
		if err != nil {
			t.Fatal(err)
		}
		if reads != 2 {
			t.Errorf("size %d: Open made %d reads, want 2 (header, last chunk)", size, reads)
		}
		tailStart := (size - 1) / cs * cs
		reads = 0
		p := make([]byte, size-tailStart)
		if n, err := obj.ReadAt(p, int64(tailStart)); n != len(p) || (err != nil && err != io.EOF) || !bytes.Equal(p, data[tailStart:]) {
			t.Fatalf("size %d: ReadAt of the last chunk = %d, %v", size, n, err)
		}
		if reads != 0 {
			t.Errorf("size %d: reading the last chunk made %d reads, want 0", size, reads)
		}
		// Every range, across chunk boundaries and into the last chunk.
		for off := 0; off < size; off += max(1, cs/3) {
			for _, n := range []int{1, cs / 2, cs, 2*cs + 7, size} {
				n = min(n, size-off)
				p := make([]byte, n)
				got, err := obj.ReadAt(p, int64(off))
				if got != n || (err != nil && !(err == io.EOF && off+n == size)) || !bytes.Equal(p, data[off:off+n]) {
					t.Fatalf("size %d: ReadAt(%d bytes at %d) = %d, %v", size, n, off, got, err)
				}
				reads = 0
				r, err := obj.Stream(int64(off), int64(n))
				if err != nil {
					t.Fatal(err)
				}
				got2, err := io.ReadAll(r)
				r.Close()
				if err != nil || !bytes.Equal(got2, data[off:off+n]) {
					t.Fatalf("size %d: Stream(%d bytes at %d) = %d bytes, %v", size, n, off, len(got2), err)
				}
				if off >= tailStart && reads != 0 {
					t.Errorf("size %d: streaming from the last chunk made %d reads, want 0", size, reads)
				}
			}
		}
		obj.Close()
	}
}
