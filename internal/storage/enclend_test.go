package storage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// lendTest writes data encrypted in 64 KiB chunks to a directory (dir:
// the workers read the file) or to memory (the ciphertext is streamed),
// and returns a function that lends a range of it.
// What it lent is also written to sum, which a caller may read once the
// last byte was peeked.
func lendTest(t *testing.T, inDir bool, data []byte) (lend func(off, n int64, window int, sum io.Writer) lender, path string) {
	t.Helper()
	ctx := context.Background()
	var inner Backend = NewMemory()
	dir := t.TempDir()
	if inDir {
		d, err := NewDir("dir", dir)
		if err != nil {
			t.Fatal(err)
		}
		inner = d
	}
	_, key := testKey(t)
	e, err := NewEncrypted(inner, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetChunkSize(64 << 10); err != nil {
		t.Fatal(err)
	}
	if err := Put(ctx, e, "m/obj", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	return func(off, n int64, window int, sum io.Writer) lender {
		t.Helper()
		obj, err := e.Open(ctx, "m/obj")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { obj.Close() })
		r, err := NewReadCache(obj).LendRange(off, n, window, sum)
		if err != nil {
			t.Fatal(err)
		}
		l, ok := r.(lender)
		if !ok {
			t.Fatalf("LendRange of an encrypted object returned a %T, which does not lend", r)
		}
		t.Cleanup(func() { l.Close() })
		return l
	}, filepath.Join(dir, "m", "obj")
}

// TestEncryptedLend: the bytes an encrypted object lends are exactly the
// range's, at any offset and window, and stay unchanged until given back,
// however far the ring has wrapped (records peeked across its end are
// contiguous); from a directory and from a streamed backend.
func TestEncryptedLend(t *testing.T) {
	data := randBytes(3<<20+777, 5)
	for _, inDir := range []bool{true, false} {
		lend, _ := lendTest(t, inDir, data)
		for _, c := range []struct {
			off, n int64
			window int
		}{
			{0, -1, 300 << 10},
			{1, 100, 1 << 20},
			{64<<10 - 3, 1 << 20, 200 << 10},
			{int64(len(data)) - 5, 5, 1 << 20},
			{5, int64(len(data)) - 5, 150_000},
		} {
			var sum bytes.Buffer
			l := lend(c.off, c.n, c.window, &sum)
			end := int64(len(data))
			if c.n >= 0 {
				end = c.off + c.n
			}
			want := data[c.off:end]
			if l.Window() < min(c.window, len(want)) {
				t.Fatalf("%+v: window %d", c, l.Window())
			}
			// Peek records of odd sizes, keep about half the window lent,
			// and check each record again when giving it back.
			type rec struct {
				b   []byte
				off int
			}
			var held []rec
			pos, lent := 0, 0
			for i := 0; pos < len(want); i++ {
				n := min(1+(i*7919)%(l.Window()/3), len(want)-pos)
				for lent+n > l.Window()/2 && len(held) > 0 {
					h := held[0]
					if !bytes.Equal(h.b, want[h.off:h.off+len(h.b)]) {
						t.Fatalf("%+v, dir %v: lent bytes at %d changed before they were given back", c, inDir, h.off)
					}
					l.Return(len(h.b))
					lent -= len(h.b)
					held = held[1:]
				}
				b, err := l.Peek(n)
				if err != nil {
					t.Fatalf("%+v, dir %v: peek %d at %d: %v", c, inDir, n, pos, err)
				}
				if !bytes.Equal(b, want[pos:pos+n]) {
					t.Fatalf("%+v, dir %v: peek %d at %d: wrong bytes", c, inDir, n, pos)
				}
				l.Skip(n)
				held = append(held, rec{b, pos})
				pos, lent = pos+n, lent+n
			}
			if _, err := l.Peek(1); err == nil {
				t.Fatalf("%+v: peek past the end succeeded", c)
			}
			if !bytes.Equal(sum.Bytes(), want) {
				t.Fatalf("%+v, dir %v: sum got %d bytes, not the range's", c, inDir, sum.Len())
			}
			// And as a plain reader.
			sum.Reset()
			got, err := io.ReadAll(lend(c.off, c.n, c.window, &sum))
			if err != nil || !bytes.Equal(got, want) || !bytes.Equal(sum.Bytes(), want) {
				t.Fatalf("%+v, dir %v: Read: %d bytes, %v; sum got %d", c, inDir, len(got), err, sum.Len())
			}
		}
	}
}

// TestEncryptedLendTampered: a flipped byte in a chunk is refused before
// any byte of that chunk is lent (the chunks before it are lent), and a
// file truncated while it is lent from ends in ErrCorrupt, not in short
// or zeroed bytes.
func TestEncryptedLendTampered(t *testing.T) {
	data := randBytes(2<<20, 6)
	lend, path := lendTest(t, true, data)
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	hdr := len(orig) - (len(data)/(64<<10))*(64<<10+encTag)
	const bad = 9 // this chunk is damaged
	tampered := bytes.Clone(orig)
	tampered[hdr+bad*(64<<10+encTag)+100] ^= 1
	if err := os.WriteFile(path, tampered, 0o600); err != nil {
		t.Fatal(err)
	}
	l := lend(0, -1, 256<<10, nil)
	pos := 0
	for ; ; pos += 4096 {
		b, err := l.Peek(4096)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("damaged chunk: %v, want ErrCorrupt", err)
			}
			break
		}
		if !bytes.Equal(b, data[pos:pos+4096]) {
			t.Fatalf("wrong bytes lent at %d", pos)
		}
		l.Skip(4096)
		l.Return(4096)
	}
	if pos != bad*(64<<10) {
		t.Fatalf("refused at %d, want the damaged chunk's start %d", pos, bad*(64<<10))
	}

	if err := os.WriteFile(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	l = lend(0, -1, 256<<10, nil)
	if _, err := l.Peek(4096); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, int64(len(orig)/2)); err != nil {
		t.Fatal(err)
	}
	for pos = 0; ; pos += 4096 {
		b, err := l.Peek(4096)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("truncated: %v, want ErrCorrupt", err)
			}
			break
		}
		if !bytes.Equal(b, data[pos:pos+4096]) {
			t.Fatalf("truncated: wrong bytes lent at %d", pos)
		}
		l.Skip(4096)
		l.Return(4096)
	}
	if pos >= len(data) {
		t.Fatal("the truncated object was lent whole")
	}
}

// TestEncryptedLendStop: a lender closed with bytes lent and chunks
// waiting for room does not hang, and Peek fails once stopped.
func TestEncryptedLendStop(t *testing.T) {
	data := randBytes(4<<20, 7)
	lend, _ := lendTest(t, true, data)
	l := lend(0, -1, 128<<10, io.Discard)
	if _, err := l.Peek(100 << 10); err != nil {
		t.Fatal(err)
	}
	l.Skip(100 << 10)
	l.Stop()
	for range 100 { // chunks queued before Stop may still be handed out
		if _, err := l.Peek(1000); err != nil {
			break
		}
		l.Skip(1000)
		l.Return(1000)
	}
	if _, err := l.Peek(1000); err == nil {
		t.Fatal("peek succeeds after Stop")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestEncryptedDirReadCacheBlocks: a ReadCache over an encrypted file in a
// directory reads 1 MiB blocks and one ahead, so that a small read near the
// end (an archive's directory) decrypts about 1 MiB, not 16 MiB blocks.
func TestEncryptedDirReadCacheBlocks(t *testing.T) {
	ctx := context.Background()
	d, err := NewDir("dir", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, key := testKey(t)
	e, err := NewEncrypted(d, key)
	if err != nil {
		t.Fatal(err)
	}
	data := randBytes(40<<20+5, 8)
	if err := Put(ctx, e, "o", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	obj, err := e.Open(ctx, "o")
	if err != nil {
		t.Fatal(err)
	}
	c := NewReadCache(obj)
	defer c.Close()
	p := make([]byte, 100)
	if _, err := c.ReadAt(p, int64(len(data))-200); err != nil || !bytes.Equal(p, data[len(data)-200:len(data)-100]) {
		t.Fatalf("ReadAt: %v", err)
	}
	if _, err := c.ReadAt(p, 3<<20); err != nil || !bytes.Equal(p, data[3<<20:3<<20+100]) {
		t.Fatalf("ReadAt: %v", err)
	}
	time.Sleep(50 * time.Millisecond) // the read ahead
	if f := c.Fetched(); f > 4<<20 {  // blocks 39, 40 (5 bytes), 3 and 4 ahead
		t.Fatalf("two small reads fetched %d bytes", f)
	}
}
