package storage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"
)

// ReadCache reads the same bytes as the object at any offset and length,
// fetches each block once when the whole object fits, and reports errors.
func TestReadCache(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	data := make([]byte, 5*cacheBlockSize/2+12345)
	rand.NewChaCha8([32]byte{7}).Read(data)
	if err := Put(ctx, m, "a", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	obj, err := m.Open(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	c := NewReadCache(obj)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200; i++ {
		off := r.Int64N(int64(len(data)))
		n := r.IntN(3 * cacheBlockSize / 2)
		buf := make([]byte, n)
		got, err := c.ReadAt(buf, off)
		want := min(n, len(data)-int(off))
		if got != want || !bytes.Equal(buf[:got], data[off:off+int64(got)]) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v; want %d bytes equal to the object", n, off, got, err, want)
		}
		if got < n && err != io.EOF {
			t.Fatalf("short read at the end: err %v, want io.EOF", err)
		}
	}
	// Two full passes (a digest check, then a decode) fetch every byte once.
	for pass := 0; pass < 2; pass++ {
		if _, err := io.Copy(io.Discard, io.NewSectionReader(c, 0, c.Size())); err != nil {
			t.Fatal(err)
		}
	}
	if f := c.Fetched(); f > int64(len(data))+int64(cacheAhead)*cacheBlockSize {
		t.Errorf("fetched %d bytes for a %d-byte object read in two passes", f, len(data))
	}
	var closed int64 = -1
	c.OnClose = func(n int64) { closed = n }
	c.Close()
	if closed != c.Fetched() {
		t.Errorf("OnClose got %d, want %d", closed, c.Fetched())
	}

	// An object that fails to read: the error reaches the reader.
	c = NewReadCache(&failingObject{size: 3 * cacheBlockSize})
	if _, err := c.ReadAt(make([]byte, 10), cacheBlockSize); err == nil || !errors.Is(err, ErrUnreachable) {
		t.Fatalf("ReadAt of a failing object: %v, want ErrUnreachable", err)
	}
}

type failingObject struct{ size int64 }

func (f *failingObject) ReadAt([]byte, int64) (int, error) { return 0, ErrUnreachable }
func (f *failingObject) Size() int64                       { return f.size }
func (f *failingObject) Stream(int64, int64) (io.ReadCloser, error) {
	return nil, &Error{Backend: "fail", Op: "read", Err: ErrUnreachable}
}
func (f *failingObject) Close() error { return nil }

// Locations name objects so that Locate and KeyOf find them again, and
// never carry credentials.
func TestLocations(t *testing.T) {
	d, err := NewDir(KindDir, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	loc := Location(d, "jobs/j1/a.zip")
	if key, ok := KeyOf(d, loc); !ok || key != "jobs/j1/a.zip" {
		t.Fatalf("KeyOf(%q) = %q, %v", loc, key, ok)
	}
	if _, ok := KeyOf(d, "/elsewhere/a.zip"); ok {
		t.Fatal("KeyOf accepted a path outside the directory")
	}
	s3 := &S3{cfg: S3Config{Bucket: "b"}, prefix: "p/"}
	if got := Location(s3, "k.zip"); got != "s3://b/p/k.zip" {
		t.Fatalf("S3 location %q", got)
	}
	js := &JetStream{cfg: JetStreamConfig{URL: "nats://u:secret@h:4222,nats://h2:4222", Bucket: "obs"}}
	if got := Location(js, "k.zip"); got != "nats://h:4222/obs/k.zip" {
		t.Fatalf("JetStream location %q (must not show the password)", got)
	}
	if key, ok := KeyOf(js, "nats://h:4222/obs/x/k.zip"); !ok || key != "x/k.zip" {
		t.Fatalf("KeyOf JetStream: %q %v", key, ok)
	}

	base := Config{S3: S3Config{Endpoint: "http://e:1", Region: "r", PathStyle: true},
		JetStream: JetStreamConfig{URL: "nats://u:pw@h:4222", CredsFile: "/c"}, Encryption: EncryptionConfig{KeyFile: "/k"}}
	for _, tc := range []struct {
		in, key string
		check   func(Config) bool
	}{
		{"s3://b/dir/k.zip", "dir/k.zip", func(c Config) bool {
			return c.Backend == KindS3 && c.S3.Bucket == "b" && c.S3.Prefix == "" && c.S3.Endpoint == "http://e:1" && c.S3.PathStyle && c.Encryption.KeyFile == "/k"
		}},
		{"s3://b/k.zip?endpoint=http://o:2", "k.zip", func(c Config) bool { return c.S3.Endpoint == "http://o:2" && !c.S3.PathStyle }},
		{"nats://h:4222/obs/x/k.zip", "x/k.zip", func(c Config) bool {
			return c.Backend == KindJetStream && c.JetStream.Bucket == "obs" && c.JetStream.URL == "nats://u:pw@h:4222" && c.JetStream.CredsFile == "/c"
		}},
		{"file:///d/k.zip", "k.zip", func(c Config) bool { return c.Backend == KindDir && c.Dir.Path == "/d" }},
		{"/d/e/k.zip", "k.zip", func(c Config) bool { return c.Backend == KindDir && c.Dir.Path == "/d/e" }},
	} {
		c, key, err := Locate(tc.in, base)
		if err != nil || key != tc.key || !tc.check(c) {
			t.Errorf("Locate(%q) = %+v, %q, %v", tc.in, c, key, err)
		}
	}
	for _, bad := range []string{"s3://b", "s3://b/", "nats://h:4222/obs", "s3://b/../x.zip", "nats://h/obs/.cedana-parts/x"} {
		if _, _, err := Locate(bad, base); err == nil {
			t.Errorf("Locate(%q) accepted a location that names no archive", bad)
		}
	}
}

// TestReadCacheSmallFirstRead: the small reads that open an archive (a
// local header at offset 0, the directory at the end) fetch a window each,
// not whole blocks and the ones after them; a second read in the same block
// takes the block, so a reader going on in small steps makes few requests.
func TestReadCacheSmallFirstRead(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	data := make([]byte, 3*cacheBlockSize+12345)
	rand.NewChaCha8([32]byte{9}).Read(data)
	if err := Put(ctx, m, "a", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	obj, err := m.Open(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	var streams atomic.Int64
	c := NewReadCache(&countingObject{Object: obj, streams: &streams})
	defer c.Close()
	read := func(off int64, n int) {
		t.Helper()
		p := make([]byte, n)
		got, err := c.ReadAt(p, off)
		want := min(n, len(data)-int(off))
		if got != want || !bytes.Equal(p[:got], data[off:off+int64(got)]) || (got < n && err != io.EOF) || (got == n && err != nil) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v; want %d bytes equal to the object", n, off, got, err, want)
		}
	}
	size := int64(len(data))
	read(0, 30)                       // the first entry's local header
	read(size-1024, 1024)             // the end of the directory
	read(size-3000, 2000)             // the rest of it, in the same window
	read(size-100, 200)               // past the end: io.EOF
	time.Sleep(50 * time.Millisecond) // any read ahead
	if f := c.Fetched(); f > 2*peekSize {
		t.Fatalf("opening reads fetched %d bytes, want at most %d", f, 2*peekSize)
	}
	read(peekSize-10, 20)             // a second read in block 0 takes the block
	time.Sleep(50 * time.Millisecond) // the read ahead
	if f, max := c.Fetched(), int64(2*peekSize+cacheBlockSize+cacheAhead*cacheBlockSize); f > max {
		t.Fatalf("fetched %d bytes, want at most %d", f, max)
	}
	if f := c.Fetched(); f < cacheBlockSize {
		t.Fatalf("fetched %d bytes: the second read in block 0 did not take the block", f)
	}
	before := streams.Load()
	for off := int64(0); off < cacheBlockSize; off += 4096 { // small steps through block 0
		read(off, 4096)
	}
	if n := streams.Load() - before; n != 0 {
		t.Fatalf("reading a fetched block in small steps made %d requests", n)
	}
	// Small reads straddling a block boundary are ordinary reads.
	read(2*cacheBlockSize-10, 20)
}

// countingObject counts the Streams opened on an object.
type countingObject struct {
	Object
	streams *atomic.Int64
}

func (o *countingObject) Stream(off, n int64) (io.ReadCloser, error) {
	o.streams.Add(1)
	return o.Object.Stream(off, n)
}
