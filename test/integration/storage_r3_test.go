package integration

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

	"github.com/cedana/cedana/internal/storage"
)

// TestJetStreamR3Large stores archives of CEDANA_STORAGE_LARGE GiB (e.g.
// "1,4") in a JetStream object store replicated three times on three real
// nats-server processes, reads each back whole and checks its digest, then
// kills one server and reads it again from the two left. The R1 proof is
// internal/storage's TestJetStreamLarge. Minutes per GiB: only when asked.
func TestJetStreamR3Large(t *testing.T) {
	sizes := os.Getenv("CEDANA_STORAGE_LARGE")
	if sizes == "" {
		t.Skip("set CEDANA_STORAGE_LARGE=1,4 to store 1 GiB and 4 GiB archives at R3 on three nats-servers (minutes)")
	}
	nc := startNATSCluster(t, "127.0.0.1")
	ctx := context.Background()
	var b *storage.JetStream
	var err error
	// The object store can be created once the servers have elected a
	// JetStream meta leader.
	for deadline := time.Now().Add(60 * time.Second); ; {
		b, err = storage.NewJetStream(ctx, storage.JetStreamConfig{URL: nc.url(), Bucket: "r3", CreateBucket: true, Replicas: 3})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		t.Fatalf("create an R3 object store: %v", err)
	}
	defer b.Close()
	readBack := func(obj string, size int64, want []byte) time.Duration {
		t.Helper()
		t0 := time.Now()
		// A replicated store's reads may come from a replica a moment
		// behind the write (docs/cluster.md): wait for it, and say how long.
		var o storage.Object
		var err error
		for deadline := t0.Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if o, err = b.Open(ctx, obj); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatalf("open %s: %v", obj, err)
		}
		if w := time.Since(t0); w > 100*time.Millisecond {
			t.Logf("%s became readable %.1f s after it was stored", obj, w.Seconds())
		}
		defer o.Close()
		r, err := o.Stream(0, -1)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		n, err := io.Copy(h, r)
		r.Close()
		if err != nil || n != size || !bytes.Equal(h.Sum(nil), want) {
			t.Fatalf("%s: read back %d of %d bytes, %v, digest equal %v", obj, n, size, err, bytes.Equal(h.Sum(nil), want))
		}
		return time.Since(t0)
	}
	type stored struct {
		obj  string
		size int64
		sum  []byte
	}
	var all []stored
	for _, f := range strings.Split(sizes, ",") {
		gib, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || gib < 1 {
			t.Fatalf("CEDANA_STORAGE_LARGE=%q: want GiB counts like 1,4", sizes)
		}
		size := int64(gib) << 30
		obj := "large/" + f + "gib"
		h := sha256.New()
		src := io.LimitReader(rand.NewChaCha8([32]byte{byte(gib)}), size) // generated, not held
		t0 := time.Now()
		if err := storage.Put(ctx, b, obj, io.TeeReader(src, h)); err != nil {
			t.Fatalf("store %d GiB at R3: %v", gib, err)
		}
		up := time.Since(t0)
		sum := h.Sum(nil)
		down := readBack(obj, size, sum)
		t.Logf("R3: %d GiB stored in %.1f s (%.0f MB/s), read back in %.1f s (%.0f MB/s)",
			gib, up.Seconds(), float64(size)/up.Seconds()/1e6, down.Seconds(), float64(size)/down.Seconds()/1e6)
		all = append(all, stored{obj, size, sum})
	}
	// Lose a server: every archive reads back whole from the other two.
	victim := nc.connectedTo(os.Getpid()) // the one this client talks to: it must reconnect
	if victim < 0 {
		victim = 2
	}
	nc.kill(victim)
	t.Logf("killed nats-server n%d", victim)
	for _, s := range all {
		var took time.Duration
		for deadline := time.Now().Add(60 * time.Second); ; {
			o, err := b.Open(ctx, s.obj)
			if err == nil {
				o.Close()
				took = readBack(s.obj, s.size, s.sum)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s unreadable after losing a server: %v", s.obj, err)
			}
			time.Sleep(time.Second)
		}
		t.Logf("R3 with a server down: %s read back whole in %.1f s", s.obj, took.Seconds())
	}
}
