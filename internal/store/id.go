package store

import (
	"crypto/rand"
	"encoding/binary"
	"sync/atomic"
	"time"
)

// crockford is Crockford's base32 alphabet. Its characters are in ASCII
// order, so fixed-width encodings sort lexically in numeric order.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// lastIDNanos is the timestamp of the last ID issued by this process.
// NewID keeps it strictly increasing so that IDs issued in the same
// nanosecond, or across a backwards clock step, still sort in issue order.
// It is the package's only mutable state and is only touched atomically.
var lastIDNanos atomic.Int64

// NewID returns a unique ID that sorts lexically in creation order: prefix
// (used verbatim, e.g. "job-"), 13 base32 characters of the Unix time in
// nanoseconds, and 8 random base32 characters, e.g.
// "job-0GTMXQ5B4E2QKX4HN2B9Q". Within a process the order is strict; across
// processes it follows the wall clock.
func NewID(prefix string) string {
	ns := nextIDNanos()
	var rnd [8]byte
	// crypto/rand.Read never returns an error (it crashes the program instead).
	_, _ = rand.Read(rnd[:])
	r := binary.BigEndian.Uint64(rnd[:]) >> 24 // 40 random bits

	buf := make([]byte, 0, len(prefix)+21)
	buf = append(buf, prefix...)
	// 13 characters cover 65 bits; the top one is '0' or '1'.
	for shift := 60; shift >= 0; shift -= 5 {
		buf = append(buf, crockford[(uint64(ns)>>uint(shift))&31])
	}
	for shift := 35; shift >= 0; shift -= 5 {
		buf = append(buf, crockford[(r>>uint(shift))&31])
	}
	return string(buf)
}

// nextIDNanos returns max(now, last+1) and records it as the last.
func nextIDNanos() int64 {
	now := time.Now().UnixNano()
	for {
		last := lastIDNanos.Load()
		next := now
		if next <= last {
			next = last + 1
		}
		if lastIDNanos.CompareAndSwap(last, next) {
			return next
		}
	}
}
