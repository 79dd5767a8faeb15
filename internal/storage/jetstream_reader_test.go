package storage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestJetStreamDamagedParts damages stored archives the ways a reader must notice — a
// chunk's bytes changed, a chunk gone, a part deleted — and checks that reading fails
// with ErrCorrupt, without returning any byte of the changed chunk; that a cancelled
// read stops; and that streams closed early (with parts opened ahead) leave no consumer
// on the server.
func TestJetStreamDamagedParts(t *testing.T) {
	s := startNATS(t)
	ctx := context.Background()
	b, err := NewJetStream(ctx, jsConfig(s, "bad")) // 1 MiB parts
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	st, err := b.js.Stream(ctx, "OBJ_bad")
	if err != nil {
		t.Fatal(err)
	}
	data := randBytes(5<<20+123, 7)
	put := func(key string) *jsIndex {
		t.Helper()
		if err := Put(ctx, b, key, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		idx, err := b.readIndex(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return idx
	}
	// lastChunk returns the last chunk message of part p.
	lastChunk := func(p jsPart) *jetstream.RawStreamMsg {
		t.Helper()
		info, err := b.obs.GetInfo(ctx, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		m, err := st.GetLastMsgForSubject(ctx, "$O.bad.C."+info.NUID)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	// readUntilErr streams key and returns what came before the error.
	readUntilErr := func(key string) ([]byte, error) {
		t.Helper()
		obj, err := b.Open(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		defer obj.Close()
		r, _ := obj.Stream(0, -1)
		defer r.Close()
		got, err := io.ReadAll(r)
		if err == nil {
			t.Fatalf("%s: read %d bytes without an error", key, len(got))
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: err = %v, want ErrCorrupt", key, err)
		}
		if !bytes.Equal(got, data[:len(got)]) {
			t.Fatalf("%s: the bytes before the error differ from the archive's", key)
		}
		if n, again := r.Read(make([]byte, 100)); n != 0 || !errors.Is(again, ErrCorrupt) {
			t.Fatalf("%s: a Read after the error = %d, %v; want the error again", key, n, again)
		}
		return got, err
	}

	// A chunk's bytes changed (same length, same count): the digest check.
	idx := put("changed")
	m := lastChunk(idx.Parts[2])
	bad := bytes.Clone(m.Data)
	bad[len(bad)/2] ^= 1
	if err := st.DeleteMsg(ctx, m.Sequence); err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.Publish(ctx, m.Subject, bad); err != nil {
		t.Fatal(err)
	}
	got, err := readUntilErr("changed")
	if !errors.Is(err, jetstream.ErrDigestMismatch) {
		t.Fatalf("changed chunk: err = %v, want a digest mismatch", err)
	}
	if end := int(2*idx.PartSize+idx.Parts[2].Size) - len(m.Data); len(got) > end {
		t.Fatalf("changed chunk: %d bytes returned, the changed chunk starts at %d", len(got), end)
	}

	// A chunk gone.
	idx = put("gone")
	if err := st.DeleteMsg(ctx, lastChunk(idx.Parts[3]).Sequence); err != nil {
		t.Fatal(err)
	}
	if got, _ := readUntilErr("gone"); len(got) > int(3*idx.PartSize) {
		t.Fatalf("chunk gone: %d bytes returned, part 3 starts at %d", len(got), 3*idx.PartSize)
	}

	// A part deleted.
	idx = put("deleted")
	if err := b.obs.Delete(ctx, idx.Parts[1].Name); err != nil {
		t.Fatal(err)
	}
	if got, err := readUntilErr("deleted"); len(got) > int(idx.PartSize) || !bytes.Contains([]byte(err.Error()), []byte("part 1 is missing")) {
		t.Fatalf("part deleted: %d bytes returned, %v", len(got), err)
	}

	// A cancelled read stops.
	put("whole")
	cctx, cancel := context.WithCancel(ctx)
	obj, err := b.Open(cctx, "whole")
	if err != nil {
		t.Fatal(err)
	}
	r, _ := obj.Stream(0, -1)
	if _, err := io.ReadFull(r, make([]byte, 1<<20+10)); err != nil {
		t.Fatal(err)
	}
	cancel()
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, r); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("read after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read after cancel did not return")
	}
	r.Close()

	// Streams closed after a few bytes, with parts opened ahead.
	obj, err = b.Open(ctx, "whole")
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 1 << 20, 3<<20 - 1} {
		r, _ := obj.Stream(off, -1)
		if _, err := io.ReadFull(r, make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		r.Close()
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Consumers == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d consumers left on the server after the streams were closed", info.State.Consumers)
		}
	}
}
