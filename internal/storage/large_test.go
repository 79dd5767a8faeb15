package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// newPRNG is an endless pseudo-random reader (archives of GiBs are generated, not held).
func newPRNG(seed byte) io.Reader { return rand.NewChaCha8([32]byte{seed}) }

// TestJetStreamLarge stores archives of CEDANA_STORAGE_LARGE GiB (a comma-separated
// list, e.g. "1,4") in a real nats-server at R1 — plain and encrypted — reads them back
// whole and by range, and logs how long each step took. FACTS.md warns that single
// multi-GiB objects stall or fail in JetStream object stores; this is the proof that the
// parts layout does not. It takes about a minute per GiB on a loaded 2-core VM, so it
// only runs when asked.
func TestJetStreamLarge(t *testing.T) {
	sizes := os.Getenv("CEDANA_STORAGE_LARGE")
	if sizes == "" {
		t.Skip("set CEDANA_STORAGE_LARGE=1,4 to store 1 GiB and 4 GiB archives in a real nats-server (minutes)")
	}
	s := startNATS(t)
	ctx := context.Background()
	b, err := NewJetStream(ctx, JetStreamConfig{URL: s.natsURL(), Bucket: "large", CreateBucket: true, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, key := testKey(t)
	e, _ := NewEncrypted(b, key)
	for _, f := range strings.Split(sizes, ",") {
		gib, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || gib < 1 {
			t.Fatalf("CEDANA_STORAGE_LARGE=%q: want GiB counts like 1,4", sizes)
		}
		size := int64(gib) << 30
		for _, be := range []Backend{b, e} {
			name := be.Name()
			obj := "large/" + f + "gib"
			src := io.LimitReader(newPRNG(byte(gib)), size)
			h := sha256.New()
			t0 := time.Now()
			if err := Put(ctx, be, obj, io.TeeReader(src, h)); err != nil {
				t.Fatalf("%s: store %d GiB: %v", name, gib, err)
			}
			up := time.Since(t0)
			want := h.Sum(nil)
			st, err := be.Stat(ctx, obj)
			if err != nil || st.Size != size {
				t.Fatalf("%s: Stat = %+v, %v", name, st, err)
			}
			t0 = time.Now()
			o, err := be.Open(ctx, obj)
			if err != nil {
				t.Fatal(err)
			}
			r, _ := o.Stream(0, -1)
			h.Reset()
			n, err := io.Copy(h, r)
			r.Close()
			if err != nil || n != size || !bytes.Equal(h.Sum(nil), want) {
				t.Fatalf("%s: read back %d bytes, %v, digest equal %v", name, n, err, bytes.Equal(h.Sum(nil), want))
			}
			down := time.Since(t0)
			// A ranged read across a part boundary near the end.
			p := make([]byte, 1<<20)
			off := size - int64(defaultPartSize) - int64(len(p))/2
			t0 = time.Now()
			if _, err := o.ReadAt(p, off); err != nil {
				t.Fatalf("%s: ReadAt near the end: %v", name, err)
			}
			ranged := time.Since(t0)
			ref := make([]byte, len(p))
			rr := io.LimitReader(newPRNG(byte(gib)), size)
			io.CopyN(io.Discard, rr, off)
			io.ReadFull(rr, ref)
			if !bytes.Equal(p, ref) {
				t.Fatalf("%s: ranged read differs", name)
			}
			o.Close()
			t.Logf("%s: %d GiB stored in %.1f s (%.0f MB/s), read back in %.1f s (%.0f MB/s), 1 MiB ranged read at the end in %d ms",
				name, gib, up.Seconds(), float64(size)/up.Seconds()/1e6, down.Seconds(), float64(size)/down.Seconds()/1e6, ranged.Milliseconds())
			if err := be.Delete(ctx, obj); err != nil {
				t.Fatal(err)
			}
		}
	}
}
