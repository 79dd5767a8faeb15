package archive

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"hash/crc32"

	"github.com/zeebo/xxh3"
)

// digests hashes an entry's stored bytes with the functions the manifest
// records for it: SHA-256 (stored_sha256, format 2 on), XXH3-128
// (stored_xxh3, format 3 on) and CRC-32C (stored_crc32c, which format 1
// archives may record). A nil field is not computed.
type digests struct {
	sha hash.Hash
	xxh *xxh3.Hasher
	crc hash.Hash32
}

// newDigests returns what a writer computes for every entry.
func newDigests() *digests {
	return &digests{sha: sha256.New(), xxh: xxh3.New()}
}

// checksFor returns what a reader computes to check the stored bytes of
// an entry recorded as info. A restore checks the XXH3-128 alone when the
// manifest has one: it catches any damage as surely as SHA-256 and costs a
// fifth of the CPU, which a restore shares with CRIU (see
// docs/archive-format.md). all asks for every recorded digest instead, as
// Reader.Verify does.
func checksFor(info EntryInfo, all bool) *digests {
	d := &digests{}
	if info.StoredXXH3 != "" {
		d.xxh = xxh3.New()
		if !all {
			return d
		}
	}
	if info.StoredSHA256 != "" {
		d.sha = sha256.New()
	}
	if info.StoredCRC32C != "" {
		d.crc = crc32.New(castagnoli)
	}
	return d
}

// none reports whether d computes nothing (a format 1 entry without a
// stored CRC-32C, whose content digest is checked after decoding).
func (d *digests) none() bool { return d.sha == nil && d.xxh == nil && d.crc == nil }

func (d *digests) Write(p []byte) (int, error) {
	if d.sha != nil {
		d.sha.Write(p)
	}
	if d.xxh != nil {
		d.xxh.Write(p)
	}
	if d.crc != nil {
		d.crc.Write(p)
	}
	return len(p), nil
}

// record fills in the stored-bytes digests of info.
func (d *digests) record(info *EntryInfo) {
	if d.sha != nil {
		info.StoredSHA256 = hex.EncodeToString(d.sha.Sum(nil))
	}
	if d.xxh != nil {
		info.StoredXXH3 = xxh3Hex(d.xxh)
	}
}

// verify compares what d computed with what info records.
func (d *digests) verify(info EntryInfo) error {
	if d.xxh != nil {
		if got := xxh3Hex(d.xxh); got != info.StoredXXH3 {
			return fmt.Errorf("%w: stored bytes changed (XXH3-128 %s, manifest says %s)", ErrCorrupt, got, info.StoredXXH3)
		}
	}
	if d.sha != nil {
		if got := hex.EncodeToString(d.sha.Sum(nil)); got != info.StoredSHA256 {
			return fmt.Errorf("%w: stored bytes changed (SHA-256 %s, manifest says %s)", ErrCorrupt, got, info.StoredSHA256)
		}
	}
	if d.crc != nil {
		if got := fmt.Sprintf("%08x", d.crc.Sum32()); got != info.StoredCRC32C {
			return fmt.Errorf("%w: stored bytes changed (CRC-32C %s, manifest says %s)", ErrCorrupt, got, info.StoredCRC32C)
		}
	}
	return nil
}

// xxh3Hex is the canonical form of an XXH3-128 digest (high 64 bits
// first, big-endian), as `xxhsum -H2` prints it.
func xxh3Hex(h *xxh3.Hasher) string {
	b := h.Sum128().Bytes()
	return hex.EncodeToString(b[:])
}

// castagnoli is the CRC-32C table (hardware-accelerated on amd64/arm64).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)
