package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
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
	readUntilErr := func(key string) ([]byte, error) { return readUntilCorrupt(t, b, key, data) }

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
	if got, err := readUntilErr("gone"); len(got) > int(3*idx.PartSize) || !strings.Contains(err.Error(), "part 3 has 1 of its 2 chunks") {
		t.Fatalf("chunk gone: %d bytes returned, part 3 starts at %d; %v", len(got), 3*idx.PartSize, err)
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

// TestJetStreamRuns checks how a range of several parts is read: with one consumer when
// the index names the parts' chunk subjects; correctly, through consumers of their own,
// when the parts' chunks are interleaved in the stream (as older writers stored them)
// or the index is an older one without the subjects; and that a damaged middle part is
// still detected and named whichever way it is read.
func TestJetStreamRuns(t *testing.T) {
	s := startNATS(t)
	ctx := context.Background()
	b, err := NewJetStream(ctx, jsConfig(s, "runs")) // 1 MiB parts of 2 chunks
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	st, err := b.js.Stream(ctx, "OBJ_runs")
	if err != nil {
		t.Fatal(err)
	}
	data := randBytes(6<<20+123, 11)
	if err := Put(ctx, b, "whole", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	idx, err := b.readIndex(ctx, "whole")
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range idx.Parts {
		if want := uint32((p.Size + jsChunkSize - 1) / jsChunkSize); p.NUID == "" || p.Chunks != want {
			t.Fatalf("part %d in the index: nuid %q, %d chunks; want a nuid and %d", i, p.NUID, p.Chunks, want)
		}
	}
	consumers := func() int {
		t.Helper()
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Consumers
	}
	waitNoConsumers := func() {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); consumers() > 0; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d consumers left on the server", consumers())
			}
		}
	}
	// readRange streams [off, off+n) of key and checks the bytes; after the first
	// mid bytes it calls during (the stream still open).
	readRange := func(key string, off, n, mid int64, during func()) {
		t.Helper()
		obj, err := b.Open(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		defer obj.Close()
		r, _ := obj.Stream(off, n)
		defer r.Close()
		got := make([]byte, n)
		if _, err := io.ReadFull(r, got[:mid]); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if during != nil {
			during()
		}
		if _, err := io.ReadFull(r, got[mid:]); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if !bytes.Equal(got, data[off:off+n]) {
			t.Fatalf("%s: bytes %d to %d differ from the archive's", key, off, off+n)
		}
	}

	// A range from the middle of part 0 to the middle of part 5, read with one consumer
	// (per part, two parts opened ahead would make three).
	readRange("whole", 512<<10+7, 5<<20, 3<<20, func() {
		if n := consumers(); n != 1 {
			t.Errorf("%d consumers while reading parts 0 to 5, want 1", n)
		}
	})
	waitNoConsumers()

	// The same archive with its parts' chunks interleaved four parts at a time (each
	// chunk published again, in the order older writers left them, on new subjects).
	var chunks [][]*jetstream.RawStreamMsg
	for _, p := range idx.Parts {
		var ms []*jetstream.RawStreamMsg
		for seq := uint64(0); ; {
			m, err := st.GetMsg(ctx, seq+1, jetstream.WithGetMsgSubject(fmt.Sprintf(jsObjChunkSubj, "runs", p.NUID)))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			ms, seq = append(ms, m), m.Sequence
		}
		chunks = append(chunks, ms)
	}
	il := *idx
	il.Parts = append([]jsPart(nil), idx.Parts...)
	for i := range il.Parts {
		il.Parts[i].NUID = nuid.Next()
	}
	for g := 0; g < len(chunks); g += 4 {
		for c := 0; c < 2; c++ {
			for i := g; i < min(g+4, len(chunks)); i++ {
				if c < len(chunks[i]) {
					if _, err := b.js.Publish(ctx, fmt.Sprintf(jsObjChunkSubj, "runs", il.Parts[i].NUID), chunks[i][c].Data); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
	putIndex := func(key string, idx *jsIndex) {
		t.Helper()
		js, err := json.Marshal(idx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.obs.Put(ctx, jetstream.ObjectMeta{Name: key, Metadata: map[string]string{
			metaIndex: "1", metaUpload: idx.Upload, metaSize: strconv.FormatInt(idx.Size, 10)}}, bytes.NewReader(js)); err != nil {
			t.Fatal(err)
		}
	}
	putIndex("interleaved", &il)
	readRange("interleaved", 0, int64(len(data)), 1<<20, nil)
	readRange("interleaved", 3<<20-5, 2<<20, 1, nil)

	// An index written before it named the chunk subjects: each part's info message is
	// read, and checked.
	old := *idx
	old.Parts = append([]jsPart(nil), idx.Parts...)
	for i := range old.Parts {
		old.Parts[i].NUID, old.Parts[i].Chunks = "", 0
	}
	putIndex("old", &old)
	readRange("old", 0, int64(len(data)), 1<<20, nil)
	old.Parts[2].Digest = idx.Parts[3].Digest
	putIndex("old-wrong-digest", &old)
	waitNoConsumers()

	// Damaged middle parts, in each kind of archive.
	readErr := func(key string) ([]byte, error) { return readUntilCorrupt(t, b, key, data) }
	if got, err := readErr("old-wrong-digest"); len(got) > 2<<20 || !strings.Contains(err.Error(), "part 2 has digest") {
		t.Fatalf("old index, wrong digest: %d bytes, %v", len(got), err)
	}
	// The last chunk of part 4 of the interleaved archive changed (and stored again, after
	// every other chunk).
	m := chunks[4][1]
	seqOf := func(subj string, first bool) uint64 {
		t.Helper()
		var m *jetstream.RawStreamMsg
		var err error
		if first {
			m, err = st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj))
		} else {
			m, err = st.GetLastMsgForSubject(ctx, subj)
		}
		if err != nil {
			t.Fatal(err)
		}
		return m.Sequence
	}
	subj4 := fmt.Sprintf(jsObjChunkSubj, "runs", il.Parts[4].NUID)
	if err := st.DeleteMsg(ctx, seqOf(subj4, false)); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(m.Data)
	bad[9] ^= 1
	if _, err := b.js.Publish(ctx, subj4, bad); err != nil {
		t.Fatal(err)
	}
	if got, err := readErr("interleaved"); len(got) > 5<<20-len(m.Data) || !errors.Is(err, jetstream.ErrDigestMismatch) || !strings.Contains(err.Error(), "part 4") {
		t.Fatalf("interleaved, part 4 changed: %d bytes, %v", len(got), err)
	}
	// Part 2 of the contiguous archive: its first chunk gone, then the whole part.
	subj2 := fmt.Sprintf(jsObjChunkSubj, "runs", idx.Parts[2].NUID)
	if err := st.DeleteMsg(ctx, seqOf(subj2, true)); err != nil {
		t.Fatal(err)
	}
	if got, err := readErr("whole"); len(got) > 2<<20 || !strings.Contains(err.Error(), "part 2 has 1 of its 2 chunks") {
		t.Fatalf("whole, a chunk of part 2 gone: %d bytes, %v", len(got), err)
	}
	if err := b.obs.Delete(ctx, idx.Parts[2].Name); err != nil {
		t.Fatal(err)
	}
	if got, err := readErr("whole"); len(got) > 2<<20 || !strings.Contains(err.Error(), "part 2 is missing") {
		t.Fatalf("whole, part 2 deleted: %d bytes, %v", len(got), err)
	}
	if got, err := readErr("old"); len(got) > 2<<20 || !strings.Contains(err.Error(), "part 2 is missing") {
		t.Fatalf("old index, part 2 deleted: %d bytes, %v", len(got), err)
	}
	waitNoConsumers()
}

// readUntilCorrupt streams key from b, whose content is data, and returns
// what came before the error. The error must be ErrCorrupt, come after
// data's first bytes only, and come again at the next Read.
func readUntilCorrupt(t *testing.T, b Backend, key string, data []byte) ([]byte, error) {
	t.Helper()
	obj, err := b.Open(context.Background(), key)
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
