package archive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// TestRunReaderSizeHint checks that a stream reaches the stages whole and
// in order whatever its expected size says (a file may change between
// Stat and the read).
func TestRunReaderSizeHint(t *testing.T) {
	const bufSize = 1024
	for _, tc := range []struct {
		name       string
		size, hint int
	}{
		{"exact", 100, 100},
		{"empty", 0, 0},
		{"unknown", 100, -1},
		{"longer than expected", 100, 10},
		{"much longer than expected", 5000, 10},
		{"shorter than expected", 10, 100},
		{"expected one buffer", 5000, bufSize - 1},
		{"expected just below a buffer", bufSize - 2, bufSize - 2},
		{"expected several buffers", 5000, 5000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPipeline(bufSize, 4)
			data := randomBytes(uint64(tc.size), tc.size)
			for round := range 2 { // the second round reuses the small buffer
				var got []byte
				err := p.runReader(context.Background(), bytes.NewReader(data), int64(tc.hint),
					func(b []byte) error { got = append(got, b...); return nil })
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("round %d: stages got %d bytes, want the %d written", round, len(got), len(data))
				}
			}
			if cap(p.small) >= bufSize {
				t.Errorf("small buffer has capacity %d, want less than %d", cap(p.small), bufSize)
			}
		})
	}
}

// TestFrameWriterSizeHint checks that an entry is cut into frameSize
// frames and decodes to its content whatever its expected size says.
func TestFrameWriterSizeHint(t *testing.T) {
	for _, tc := range []struct {
		name       string
		size, hint int
	}{
		{"small exact", 5000, 5000},
		{"small, expected larger", 5000, 1 << 20},
		{"block-sized", maxBlockSize, maxBlockSize},
		{"one frame, expected small", frameSize, 10},
		{"two frames, expected small", frameSize + 1, 10},
		{"three frames exact", 2*frameSize + 100, 2*frameSize + 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := textBytes(tc.size)
			fw := newFrameWriter(2)
			defer fw.shutdown()
			for round := range 2 { // the second round reuses the buffers
				var out bytes.Buffer
				fw.expect(int64(tc.hint))
				w, _ := fw.reset(&out)
				for rest := data; len(rest) > 0; { // uneven writes
					n := min(len(rest), 300_000)
					if _, err := w.Write(rest[:n]); err != nil {
						t.Fatal(err)
					}
					rest = rest[n:]
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				checkFrames(t, fmt.Sprintf("round %d", round), out.Bytes(), data)
			}
		})
	}
}

// checkFrames checks that comp is frames of frameSize bytes (the last one
// shorter) holding want.
func checkFrames(t *testing.T, what string, comp, want []byte) {
	t.Helper()
	s := &frameSplitter{r: bytes.NewReader(comp), size: int64(len(comp)), maxContent: frameSize, maxFrame: 2 * frameSize}
	left := int64(len(want))
	for {
		_, size, err := s.next(nil)
		if err == io.EOF || errors.Is(err, errFrameLayout) && left < 256 {
			break // zstd leaves the content size out of tiny frames
		}
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if size != min(left, frameSize) {
			t.Fatalf("%s: frame of %d bytes with %d left, want frames of %d", what, size, left, frameSize)
		}
		left -= size
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	got, err := dec.DecodeAll(comp, nil)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("%s: decodes to %d bytes (%v), want the %d written", what, len(got), err, len(want))
	}
}

// TestConcurrentArchives writes and reads archives of different sizes at
// once, so that the cached coders and buffers pass between them.
func TestConcurrentArchives(t *testing.T) {
	sets := []map[string][]byte{
		smallImages(),
		{"core-1.img": textBytes(3000), "pages-1.img": randomBytes(3, 100<<10)},
		{"pages-1.img": append(textBytes(200<<10), randomBytes(4, 50<<10)...), "empty.img": nil},
	}
	var wg sync.WaitGroup
	for i := range 6 {
		images := sets[i%len(sets)]
		dir := writeImages(t, images)
		out := t.TempDir()
		wg.Go(func() {
			for round := range 3 {
				path := filepath.Join(out, fmt.Sprintf("%d.zip", round))
				if _, _, err := Create(path, testManifest(), dir, nil, WriteOptions{Concurrency: 2}); err != nil {
					t.Error(err)
					return
				}
				r, err := Open(path, Limits{})
				if err != nil {
					t.Error(err)
					return
				}
				x := filepath.Join(out, fmt.Sprintf("x%d", round))
				os.Mkdir(x, 0o700)
				err = r.Extract(x, ExtractOptions{Concurrency: 2})
				r.Close()
				if err != nil {
					t.Error(err)
					return
				}
				for name, data := range images {
					got, err := os.ReadFile(filepath.Join(x, "images", name))
					if err != nil || !bytes.Equal(got, data) {
						t.Errorf("archive %d round %d: %s differs after extraction (%v)", i, round, name, err)
					}
				}
			}
		})
	}
	wg.Wait()
}
