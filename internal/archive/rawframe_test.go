package archive

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func TestRawFrameDecodes(t *testing.T) {
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	for _, n := range []int{0, 1, maxBlockSize - 1, maxBlockSize, maxBlockSize + 1, frameSize} {
		src := make([]byte, n)
		rand.Read(src)
		frame := appendRawFrame(nil, src)
		got, err := dec.DecodeAll(frame, nil)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if !bytes.Equal(got, src) {
			t.Fatalf("%d bytes: content differs", n)
		}
		fh, err := parseFrameHeader(frame)
		if err != nil || fh.contentSize != int64(n) {
			t.Fatalf("%d bytes: header %+v, %v", n, fh, err)
		}
	}
}

func TestIncompressible(t *testing.T) {
	random := make([]byte, frameSize)
	rand.Read(random)
	if !incompressible(random) {
		t.Error("random bytes judged compressible")
	}
	text := bytes.Repeat([]byte("step=12 loss=0.4231 the quick brown fox\n"), frameSize/40)
	if incompressible(text) {
		t.Error("text judged incompressible")
	}
	// Random pages with one page repeated: zstd would find the repeat.
	rep := bytes.Clone(random)
	copy(rep[8192:12288], rep[0:4096])
	if incompressible(rep) {
		t.Error("repeated page judged incompressible")
	}
	// Random with a zeroed half: the histogram sees the zeros.
	half := bytes.Clone(random)
	clear(half[:len(half)/2])
	if incompressible(half) {
		t.Error("half-zero frame judged incompressible")
	}
}
