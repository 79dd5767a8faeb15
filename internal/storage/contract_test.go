package storage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// spec describes a backend so that a child process (the kill test) can open it too.
type spec struct {
	Kind      string // dir, s3, jetstream, memory
	Dir       string
	S3        S3Config
	JetStream JetStreamConfig
	KeyFile   string // wrap with Encrypted
}

func (s spec) open(ctx context.Context) (Backend, error) {
	var b Backend
	var err error
	switch s.Kind {
	case "dir":
		b, err = NewDir("dir", s.Dir)
	case "s3":
		b, err = NewS3(ctx, s.S3)
	case "jetstream":
		b, err = NewJetStream(ctx, s.JetStream)
	default:
		return nil, fmt.Errorf("spec kind %q", s.Kind)
	}
	if err != nil || s.KeyFile == "" {
		return b, err
	}
	k, err := LoadKey(s.KeyFile)
	if err != nil {
		return nil, err
	}
	e, err := NewEncrypted(b, k)
	if err != nil {
		return nil, err
	}
	_ = e.SetChunkSize(64 << 10) // several chunks per test object
	return e, nil
}

func testKey(t testing.TB) (string, *Key) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key")
	if _, err := KeyGen(p); err != nil {
		t.Fatal(err)
	}
	k, err := LoadKey(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, k
}

func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// writeInPieces writes data in irregular pieces, as an archive writer would.
func writeInPieces(w io.Writer, data []byte) error {
	sizes := []int{1, 4093, 65536, 300000, 7}
	for i := 0; len(data) > 0; i++ {
		n := min(sizes[i%len(sizes)], len(data))
		if _, err := w.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

func mustNotExist(t *testing.T, b Backend, key string) {
	t.Helper()
	ctx := context.Background()
	if _, err := b.Stat(ctx, key); !errors.Is(err, ErrNotExist) {
		t.Fatalf("Stat(%s) = %v, want ErrNotExist", key, err)
	}
	if _, err := b.Open(ctx, key); !errors.Is(err, ErrNotExist) {
		t.Fatalf("Open(%s) = %v, want ErrNotExist", key, err)
	}
	l, err := b.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range l {
		if in.Key == key || strings.Contains(in.Key, reservedPrefix) {
			t.Fatalf("List shows %q: %+v", in.Key, l)
		}
	}
}

// runContract checks the Backend promises against one backend. big is a size that spans
// several multipart parts / stored parts / encryption chunks.
func runContract(t *testing.T, sp spec, big int) {
	ctx := context.Background()
	b, err := sp.open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { CloseBackend(b) })

	t.Run("RoundTrip", func(t *testing.T) {
		for i, n := range []int{0, 1, 70000, big} {
			key := fmt.Sprintf("rt/obj-%d", i)
			data := randBytes(n, uint64(i))
			w, err := b.Create(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if err := writeInPieces(w, data); err != nil {
				t.Fatal(err)
			}
			if err := w.Commit(); err != nil {
				t.Fatalf("commit %d bytes: %v", n, err)
			}
			st, err := b.Stat(ctx, key)
			if err != nil || st.Size != int64(n) || st.Key != key {
				t.Fatalf("Stat = %+v, %v; want size %d", st, err, n)
			}
			got, err := ReadAll(ctx, b, key)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("%d bytes: read back %d bytes that differ", n, len(got))
			}
		}
		// Replacing an object is atomic too: the new content, whole.
		data := randBytes(big/3, 99)
		if err := Put(ctx, b, "rt/obj-3", bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		if got, err := ReadAll(ctx, b, "rt/obj-3"); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("after replace: %d bytes, %v", len(got), err)
		}
	})

	t.Run("InvisibleUntilCommit", func(t *testing.T) {
		key := "inv/abort"
		w, err := b.Create(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeInPieces(w, randBytes(big, 3)); err != nil {
			t.Fatal(err)
		}
		mustNotExist(t, b, key)
		if err := w.Abort(); err != nil {
			t.Fatal(err)
		}
		mustNotExist(t, b, key)
		if err := w.Commit(); !errors.Is(err, ErrClosed) {
			t.Fatalf("Commit after Abort = %v, want ErrClosed", err)
		}
		mustNotExist(t, b, key)
		// A cancelled context fails the commit and leaves nothing.
		cctx, cancel := context.WithCancel(ctx)
		w, err = b.Create(cctx, "inv/cancel")
		if err != nil {
			t.Fatal(err)
		}
		_ = writeInPieces(w, randBytes(big, 4))
		cancel()
		if err := w.Commit(); err == nil {
			t.Fatal("Commit with a cancelled context succeeded")
		}
		mustNotExist(t, b, "inv/cancel")
	})

	t.Run("KilledWriter", func(t *testing.T) {
		// A child process writes most of an object and is killed (SIGKILL, by PID)
		// before Commit: the object must not appear.
		js, _ := json.Marshal(sp)
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillChild$", "-test.v")
		cmd.Env = append(os.Environ(), "CEDANA_STORAGE_CHILD="+string(js), fmt.Sprintf("CEDANA_STORAGE_CHILD_SIZE=%d", big))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		wrote := false
		for sc.Scan() {
			if sc.Text() == "WROTE" {
				wrote = true
				break
			}
		}
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		if !wrote {
			t.Fatal("the child never reported WROTE")
		}
		mustNotExist(t, b, "killed/obj")
		// What the killed writer left behind is found and removed by Sweep.
		n, err := Sweep(ctx, b, 0)
		if err != nil || n == 0 {
			t.Fatalf("Sweep after a killed writer removed %d leftovers, %v; want some", n, err)
		}
		if n, err := Sweep(ctx, b, 0); err != nil || n != 0 {
			t.Fatalf("a second Sweep removed %d, %v; want 0", n, err)
		}
	})

	t.Run("RangedReads", func(t *testing.T) {
		data := randBytes(big, 5)
		if err := Put(ctx, b, "rng/obj", bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		obj, err := b.Open(ctx, "rng/obj")
		if err != nil {
			t.Fatal(err)
		}
		defer obj.Close()
		if obj.Size() != int64(big) {
			t.Fatalf("Size = %d, want %d", obj.Size(), big)
		}
		cases := [][2]int{{0, 1}, {1, 100}, {65535, 3}, {big / 2, 70000}, {big - 10, 10}, {big - 1, 1},
			{(1 << 20) - 5, 10}, {minPartSize - 3, 6}, {0, big}}
		for _, c := range cases {
			off, n := c[0], c[1]
			p := make([]byte, n)
			got, err := obj.ReadAt(p, int64(off))
			if err != nil && !(err == io.EOF && off+n == big) {
				t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
			}
			if got != n || !bytes.Equal(p, data[off:off+n]) {
				t.Fatalf("ReadAt(%d, %d): %d bytes, equal=%v", off, n, got, bytes.Equal(p[:got], data[off:off+got]))
			}
			r, err := obj.Stream(int64(off), int64(n))
			if err != nil {
				t.Fatal(err)
			}
			s, err := io.ReadAll(r)
			r.Close()
			if err != nil || !bytes.Equal(s, data[off:off+n]) {
				t.Fatalf("Stream(%d, %d): %d bytes, %v", off, n, len(s), err)
			}
		}
		// Past the end.
		if n, err := obj.ReadAt(make([]byte, 10), int64(big-3)); n != 3 || err != io.EOF {
			t.Fatalf("ReadAt over the end = %d, %v; want 3, EOF", n, err)
		}
		// A stream closed early does not hang or leak an error.
		r, err := obj.Stream(0, -1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(r, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("ListDelete", func(t *testing.T) {
		keys := []string{"ls/a/1", "ls/a/2", "ls/ab", "ls/b/1"}
		for _, k := range keys {
			if err := Put(ctx, b, k, strings.NewReader(k)); err != nil {
				t.Fatal(err)
			}
		}
		check := func(prefix string, want ...string) {
			t.Helper()
			l, err := b.List(ctx, prefix)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, in := range l {
				got = append(got, in.Key)
				if in.Size != int64(len(in.Key)) {
					t.Fatalf("List size of %s = %d", in.Key, in.Size)
				}
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("List(%q) = %v, want %v", prefix, got, want)
			}
		}
		check("ls/a/", "ls/a/1", "ls/a/2")
		check("ls/a", "ls/a/1", "ls/a/2", "ls/ab")
		check("ls/", keys...)
		check("ls/zz")
		if err := b.Delete(ctx, "ls/a/1"); err != nil {
			t.Fatal(err)
		}
		if err := b.Delete(ctx, "ls/a/1"); err != nil {
			t.Fatalf("deleting a missing object: %v", err)
		}
		check("ls/a/", "ls/a/2")
		mustNotExist(t, b, "ls/a/1")
	})

	t.Run("BadKeys", func(t *testing.T) {
		for _, k := range []string{"", "/abs", "a/../b", "a//b", ".cedana-x", "a/.cedana-tmp-1", "a\x00b"} {
			if _, err := b.Create(ctx, k); !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("Create(%q) = %v, want ErrInvalidKey", k, err)
			}
		}
	})

	if e, ok := b.(*Encrypted); ok {
		t.Run("Tamper", func(t *testing.T) { runTamper(t, e, big) })
	}
}

// TestKillChild is the child of KilledWriter: it writes most of an object, says so, and
// waits to be killed. It does nothing in a normal run.
func TestKillChild(t *testing.T) {
	js := os.Getenv("CEDANA_STORAGE_CHILD")
	if js == "" {
		t.Skip("only runs as the child of a KilledWriter test")
	}
	var sp spec
	if err := json.Unmarshal([]byte(js), &sp); err != nil {
		t.Fatal(err)
	}
	var size int
	fmt.Sscan(os.Getenv("CEDANA_STORAGE_CHILD_SIZE"), &size)
	b, err := sp.open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	w, err := b.Create(context.Background(), "killed/obj")
	if err != nil {
		t.Fatal(err)
	}
	if err := writeInPieces(w, randBytes(size, 6)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // let background part uploads land
	fmt.Println("WROTE")
	time.Sleep(time.Minute)
}

// runTamper checks that an encrypted object that was modified in the store is refused.
func runTamper(t *testing.T, e *Encrypted, big int) {
	ctx := context.Background()
	data := randBytes(big, 8)
	if err := Put(ctx, e, "tamper/obj", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	raw, err := ReadAll(ctx, e.inner, "tamper/obj")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, data[:64]) {
		t.Fatal("the stored object contains the plaintext")
	}
	put := func(key string, b []byte) {
		t.Helper()
		if err := Put(ctx, e.inner, key, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	readErr := func(key string) error {
		obj, err := e.Open(ctx, key)
		if err != nil {
			return err
		}
		defer obj.Close()
		r, err := obj.Stream(0, -1)
		if err != nil {
			return err
		}
		defer r.Close()
		_, err = io.Copy(io.Discard, r)
		if err == nil {
			// ReadAt must refuse the damage too.
			_, err = obj.ReadAt(make([]byte, obj.Size()), 0)
			if err == io.EOF {
				err = nil
			}
		}
		return err
	}
	hdrLen := 16 + int(uint32(raw[12])<<24|uint32(raw[13])<<16|uint32(raw[14])<<8|uint32(raw[15]))
	full := (64 << 10) + encTag
	flip := func(off int) []byte { b := bytes.Clone(raw); b[off] ^= 1; return b }
	cases := map[string][]byte{
		"flipped byte in a middle chunk": flip(hdrLen + full + 100),
		"flipped tag of the last chunk":  flip(len(raw) - 1),
		"flipped chunk size":             flip(10),
		"flipped wrapped key":            flip(hdrLen - 5),
		"truncated by one chunk":         raw[:len(raw)-full],
		"truncated at a chunk boundary":  raw[:hdrLen+2*full],
		"truncated inside a chunk":       raw[:len(raw)-100],
		"extended":                       append(bytes.Clone(raw), make([]byte, full)...),
		"two chunks swapped": func() []byte {
			b := bytes.Clone(raw)
			c1, c2 := b[hdrLen:hdrLen+full], b[hdrLen+full:hdrLen+2*full]
			tmp := bytes.Clone(c1)
			copy(c1, c2)
			copy(c2, tmp)
			return b
		}(),
		"plaintext": data,
	}
	for name, b := range cases {
		put("tamper/x", b)
		err := readErr("tamper/x")
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: err = %v, want ErrCorrupt", name, err)
		}
		if !strings.Contains(err.Error(), e.inner.Name()) {
			t.Fatalf("%s: error does not name the backend: %v", name, err)
		}
	}
	// The right object still reads.
	if got, err := ReadAll(ctx, e, "tamper/obj"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("untouched object: %v", err)
	}
	// Another key: refused before anything is read, naming the problem.
	_, other := testKey(t)
	e2, _ := NewEncrypted(e.inner, other)
	if _, err := e2.Open(ctx, "tamper/obj"); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong key: %v, want ErrWrongKey", err)
	} else {
		noSecrets(t, err)
	}
	// No key at all: the plain backend refuses to hand out ciphertext.
	if _, err := (&plainOnly{Backend: e.inner}).Open(ctx, "tamper/obj"); !errors.Is(err, ErrEncrypted) {
		t.Fatalf("no key: %v, want ErrEncrypted", err)
	}
}
