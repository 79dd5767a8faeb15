package criu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// FuzzImageRequests feeds the image streamer's request parser what CRIU
// (or anything that can connect to the socket) might send: a stream of
// length-prefixed ImgStreamerRequestEntry messages. It runs in memory
// (readImageRequest reads any io.Reader). Properties: no panic; a request
// is accepted exactly when protowire, protobuf's own wire decoder, reads
// the message as one field 1 of type bytes, with the same name — except
// that the parser wants the tag as the one byte 0x0a every encoder
// writes, and refuses its non-minimal varint forms (refusing ends the
// session with an error, which is safe); a request
// consumes its length prefix and the length it declares, nothing more;
// io.EOF only between requests; a name that passes validImageName stays
// inside the images directory.
// Seeds: testdata/fuzz/FuzzImageRequests, the requests of a real dump.
func FuzzImageRequests(f *testing.F) {
	f.Add(encodeRequest("inventory.img"))
	f.Fuzz(func(t *testing.T, stream []byte) {
		// The parser on one message, whatever its framing.
		want, werr := protowireName(stream)
		got, err := parseImageRequest(stream)
		if err == nil && (werr != nil || got != want) {
			t.Fatalf("parseImageRequest(%q) = %q; protowire: %q, %v", stream, got, want, werr)
		}
		if werr == nil && stream[0] == 0x0a && (err != nil || got != want) {
			t.Fatalf("parseImageRequest(%q) = %q, %v; protowire: %q", stream, got, err, want)
		}
		r := bytes.NewReader(stream)
		for {
			left := r.Len()
			name, err := readImageRequest(r)
			if err == io.EOF {
				if left != 0 {
					t.Fatalf("io.EOF with %d bytes of a request read", left)
				}
				return
			}
			if err != nil {
				return
			}
			used := stream[len(stream)-left : len(stream)-r.Len()]
			if len(used) < 4 || int(binary.LittleEndian.Uint32(used)) != len(used)-4 {
				t.Fatalf("request %q consumed %q, not its declared length", name, used)
			}
			if got, err := protowireName(used[4:]); err != nil || got != name {
				t.Fatalf("request %q: protowire reads %q (%v)", name, got, err)
			}
			if validImageName(name) {
				dir := "/images"
				if p := filepath.Join(dir, name); filepath.Dir(p) != dir {
					t.Fatalf("valid image name %q leads to %s", name, p)
				}
			}
		}
	})
}

// encodeRequest is CRIU's encoding of a request for name.
func encodeRequest(name string) []byte {
	msg := protowire.AppendTag(nil, 1, protowire.BytesType)
	msg = protowire.AppendString(msg, name)
	return append(binary.LittleEndian.AppendUint32(nil, uint32(len(msg))), msg...)
}

// protowireName decodes ImgStreamerRequestEntry with protobuf's wire
// decoder: exactly one field, number 1, of bytes.
func protowireName(msg []byte) (string, error) {
	num, typ, n := protowire.ConsumeTag(msg)
	if n < 0 || num != 1 || typ != protowire.BytesType {
		return "", errors.New("not field 1 of type bytes")
	}
	v, m := protowire.ConsumeBytes(msg[n:])
	if m < 0 || n+m != len(msg) {
		return "", errors.New("bad length")
	}
	return string(v), nil
}
