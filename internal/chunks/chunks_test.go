package chunks

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/storage"
)

// memory returns pages of n bytes that compress somewhat (like real
// memory): random words in runs.
func memory(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64() & 0x0f0f0f0f0f0f0f0f
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// touch changes a contiguous fraction of mem.
func touch(mem []byte, frac float64, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 2))
	n := int(float64(len(mem)) * frac)
	at := r.IntN(len(mem) - n)
	for i := at; i < at+n; i++ {
		mem[i] ^= byte(r.Uint32()) | 1
	}
}

// writeArchive writes an archive with one large pages image and a small
// one into d at key, and returns what the write stored.
func writeArchive(t testing.TB, d *Dedup, key string, pages []byte) Stats {
	t.Helper()
	dst, err := d.Create(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	w, err := archive.NewWriterTo(key, dst.(archive.Destination), archive.WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AddImage("pages-1.img", bytes.NewReader(pages), int64(len(pages))); err != nil {
		t.Fatal(err)
	}
	if err := w.AddImage("core-1.img", strings.NewReader("small image"), -1); err != nil {
		t.Fatal(err)
	}
	m := &archive.Manifest{Kind: archive.KindProcess, Created: time.Now(), Cedana: "test", RootPID: 1,
		Processes: []archive.Process{{PID: 1, Name: "init"}}, Options: archive.DumpOptions{NetworkLock: "skip"}}
	if _, _, err := w.Close(m, nil); err != nil {
		t.Fatal(err)
	}
	return dst.(*Writer).Stats()
}

// readPages opens the checkpoint at key, verifies every entry and returns
// its pages image.
func readPages(d *Dedup, key string) ([]byte, error) {
	obj, err := d.Open(context.Background(), key)
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	r, err := archive.OpenReaderAt(key, obj, obj.Size(), archive.DefaultLimits())
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if err := r.Verify(archive.ExtractOptions{}); err != nil {
		return nil, err
	}
	var got bytes.Buffer
	if err := r.StreamEntry("images/pages-1.img", &got); err != nil {
		return nil, err
	}
	return got.Bytes(), nil
}

// TestDedupSharesUnchangedFrames: the second checkpoint of memory of which
// 1 % changed stores about the frames that changed, and both read back
// whole and verified.
func TestDedupSharesUnchangedFrames(t *testing.T) {
	d := New(storage.NewMemory())
	mem := memory(64<<20, 1)
	first := bytes.Clone(mem)
	st := writeArchive(t, d, "jobs/j1/a.zip", mem)
	if st.NewChunks != st.Chunks || st.Chunks < 16 {
		t.Fatalf("first checkpoint: %+v, want every one of ≥16 chunks new", st)
	}
	if st.Skeleton > 64<<10 {
		t.Fatalf("skeleton is %d bytes, want only headers and small images", st.Skeleton)
	}
	touch(mem, 0.01, 2)
	st2 := writeArchive(t, d, "jobs/j1/b.zip", mem)
	if st2.NewBytes > st.Bytes/10 {
		t.Fatalf("second checkpoint stored %d new bytes of %d (%+v), want about the 1 %% that changed", st2.NewBytes, st2.Bytes, st2)
	}
	for key, want := range map[string][]byte{"jobs/j1/a.zip": first, "jobs/j1/b.zip": mem} {
		got, err := readPages(d, key)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: pages differ", key)
		}
	}
}

// TestDedupDeleteAnyOrder: checkpoints deleted in random order never break
// the others, and once all are gone, no chunk is left.
func TestDedupDeleteAnyOrder(t *testing.T) {
	mb := storage.NewMemory()
	d := New(mb)
	d.Grace = 0
	mem := memory(24<<20, 3)
	want := map[string][]byte{}
	var keys []string
	for i := range 6 {
		key := "jobs/j/" + string(rune('a'+i)) + ".zip"
		writeArchive(t, d, key, mem)
		want[key] = bytes.Clone(mem)
		keys = append(keys, key)
		touch(mem, 0.05, uint64(i))
	}
	writeArchive(t, d, "jobs/other/x.zip", mem) // another directory: untouched
	r := rand.New(rand.NewPCG(7, 7))
	r.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	for i, key := range keys {
		if err := d.Delete(context.Background(), key); err != nil {
			t.Fatalf("delete %s: %v", key, err)
		}
		for _, k := range keys[i+1:] {
			got, err := readPages(d, k)
			if err != nil || !bytes.Equal(got, want[k]) {
				t.Fatalf("after deleting %v, %s: %v (equal %v)", keys[:i+1], k, err, bytes.Equal(got, want[k]))
			}
		}
	}
	left, _ := mb.List(context.Background(), "jobs/j/")
	if len(left) != 0 {
		t.Fatalf("%d objects left after deleting every checkpoint: %v", len(left), left[0].Key)
	}
	if _, err := readPages(d, "jobs/other/x.zip"); err != nil {
		t.Fatalf("the other directory's checkpoint: %v", err)
	}
}

// TestDedupCorruptChunk: a chunk changed in storage fails the read with an
// error naming the checkpoint and the chunk, before its bytes are used.
func TestDedupCorruptChunk(t *testing.T) {
	mb := storage.NewMemory()
	d := New(mb)
	writeArchive(t, d, "jobs/j/a.zip", memory(16<<20, 5))
	chunks, _ := mb.List(context.Background(), "jobs/j/chunks/")
	if len(chunks) == 0 {
		t.Fatal("no chunks stored")
	}
	victim := chunks[len(chunks)/2].Key
	if !mb.Corrupt(victim, 100) {
		t.Fatal("could not corrupt the chunk")
	}
	_, err := readPages(d, "jobs/j/a.zip")
	if err == nil || !(errors.Is(err, storage.ErrCorrupt) || errors.Is(err, archive.ErrCorrupt)) || !strings.Contains(err.Error(), victim) || !strings.Contains(err.Error(), "jobs/j/a.zip") {
		t.Fatalf("got %v, want a corruption error naming %s and the checkpoint", err, victim)
	}
	if err := mb.Delete(context.Background(), victim); err != nil {
		t.Fatal(err)
	}
	if _, err := readPages(d, "jobs/j/a.zip"); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing chunk: got %v", err)
	}
}

// TestDedupAbortLeavesNothing: an aborted write leaves no checkpoint, and
// its chunks are collected once old enough.
func TestDedupAbortLeavesNothing(t *testing.T) {
	mb := storage.NewMemory()
	d := New(mb)
	dst, err := d.Create(context.Background(), "jobs/j/a.zip")
	if err != nil {
		t.Fatal(err)
	}
	w := dst.(*Writer)
	data := memory(1<<20, 9)
	w.Frame(0, int64(len(data)))
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if _, err := mb.Stat(context.Background(), "jobs/j/a.zip"); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("aborted checkpoint: stat gives %v", err)
	}
	if n, err := d.Collect(context.Background(), "jobs/j/a.zip", time.Now()); err != nil || n != 0 {
		t.Fatalf("young chunk collected: %d, %v", n, err)
	}
	if n, err := d.Collect(context.Background(), "jobs/j/a.zip", time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("old unreferenced chunk: collected %d, %v", n, err)
	}
}

// TestPlainArchivePassesThrough: an archive written without deduplication
// reads back unchanged.
func TestPlainArchivePassesThrough(t *testing.T) {
	mb := storage.NewMemory()
	w, _ := mb.Create(context.Background(), "jobs/j/plain.zip")
	io.WriteString(w, "not a checkpoint object, just bytes")
	w.Commit()
	obj, err := New(mb).Open(context.Background(), "jobs/j/plain.zip")
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, obj.Size())
	obj.ReadAt(b, 0)
	if string(b) != "not a checkpoint object, just bytes" {
		t.Fatalf("got %q", b)
	}
}
