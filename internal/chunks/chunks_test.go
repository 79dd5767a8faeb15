package chunks

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/storage"
)

const (
	mib       = 1 << 20
	chunkSize = 64 << 10
)

// checkpointOf stores mem as the single image of checkpoint id.
func checkpointOf(t *testing.T, s *Store, id string, mem []byte, st *PutStats) *Manifest {
	t.Helper()
	ctx := context.Background()
	img, err := s.PutImage(ctx, "pages-1.img", bytes.NewReader(mem), chunkSize, st)
	if err != nil {
		t.Fatal(err)
	}
	m := &Manifest{Version: ManifestVersion, Checkpoint: id, Created: time.Now().UTC(), Images: []Image{img}}
	if err := s.Commit(ctx, m); err != nil {
		t.Fatal(err)
	}
	return m
}

// restored reads checkpoint id's image back, verified.
func restored(s *Store, id string) ([]byte, error) {
	var out bytes.Buffer
	err := s.Export(context.Background(), id, func(string, int64) (io.Writer, error) { return &out, nil })
	return out.Bytes(), err
}

// TestDedupRetentionCorruption: successive checkpoints of memory of which
// 1 % changes store about that 1 %; deleting checkpoints in random order
// and collecting never breaks a remaining one; a corrupted chunk is
// detected, naming the checkpoint and the chunk.
func TestDedupRetentionCorruption(t *testing.T) {
	ctx := context.Background()
	b := storage.NewMemory()
	s := New(b)
	rng := rand.New(rand.NewPCG(1, 2))
	mem := make([]byte, 16*mib)
	for i := 0; i < len(mem); i += 8 {
		binary.LittleEndian.PutUint64(mem[i:], rng.Uint64())
	}
	var st PutStats
	states := map[string][]byte{}
	checkpointOf(t, s, "ck0", mem, &st)
	states["ck0"] = bytes.Clone(mem)
	if st.NewBytes != int64(len(mem)) {
		t.Fatalf("first checkpoint stored %d bytes, want all %d", st.NewBytes, len(mem))
	}
	for i := 1; i < 10; i++ {
		// Touch 1 % of the memory, a contiguous range at a random place.
		off := rng.IntN(len(mem) - len(mem)/100)
		for k := off; k < off+len(mem)/100; k++ {
			mem[k]++
		}
		st = PutStats{}
		id := fmt.Sprintf("ck%d", i)
		checkpointOf(t, s, id, mem, &st)
		states[id] = bytes.Clone(mem)
		if limit := int64(len(mem)/100 + 2*chunkSize); st.NewBytes > limit {
			t.Errorf("%s stored %d new bytes after touching 1 %% (%d bytes): want at most %d", id, st.NewBytes, len(mem)/100, limit)
		}
	}

	ids := make([]string, 0, len(states))
	for id := range states {
		ids = append(ids, id)
	}
	rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	for n, id := range ids[:7] {
		if err := s.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
		delete(states, id)
		if _, err := s.Collect(ctx, 0, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		for left, want := range states {
			got, err := restored(s, left)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("after deleting %d checkpoint(s) (%v), %s no longer restores: %v", n+1, ids[:n+1], left, err)
			}
		}
	}

	// Corrupt one chunk of a remaining checkpoint in place.
	victim := ids[7]
	m, err := s.Manifest(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	c := m.Images[0].Chunks[3]
	bad, err := s.Get(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	bad = bytes.Clone(bad)
	bad[100] ^= 1
	w, _ := b.Create(ctx, c.Key())
	_, _ = w.Write(bad)
	_ = w.Commit()
	_, err = restored(s, victim)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "checkpoint "+victim) || !strings.Contains(err.Error(), c.Key()) {
		t.Errorf("restore of %s with a corrupt chunk: %v; want ErrCorrupt naming the checkpoint and %s", victim, err, c.Key())
	}
}

// TestCollectGrace: an unreferenced chunk younger than the grace period
// (a checkpoint being written) survives Collect; older ones go.
func TestCollectGrace(t *testing.T) {
	ctx := context.Background()
	s := New(storage.NewMemory())
	if _, _, err := s.Put(ctx, []byte("orphan")); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Collect(ctx, time.Hour, time.Now()); err != nil || n != 0 {
		t.Errorf("Collect within the grace period deleted %d (%v)", n, err)
	}
	if n, err := s.Collect(ctx, time.Hour, time.Now().Add(2*time.Hour)); err != nil || n != 1 {
		t.Errorf("Collect after the grace period deleted %d (%v), want 1", n, err)
	}
}

// TestManifestValidation: a manifest whose chunks do not add up, or that
// names a bad digest, is refused.
func TestManifestValidation(t *testing.T) {
	s := New(storage.NewMemory())
	for _, m := range []*Manifest{
		{Version: 2, Checkpoint: "a"},
		{Version: ManifestVersion, Checkpoint: "../a"},
		{Version: ManifestVersion, Checkpoint: "a", Images: []Image{{Name: "x", Size: 5, Chunks: []Ref{{Digest: strings.Repeat("a", 64), Size: 4}}}}},
		{Version: ManifestVersion, Checkpoint: "a", Images: []Image{{Name: "x", Size: 4, Chunks: []Ref{{Digest: "zz", Size: 4}}}}},
	} {
		if err := s.Commit(context.Background(), m); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Commit(%+v) = %v, want ErrCorrupt", m, err)
		}
	}
}
