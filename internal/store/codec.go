package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

// Checkpoint records use a compact binary encoding instead of JSON: a
// catalogue may hold tens of thousands of them and ListCheckpoints decodes
// every one of a job's, which encoding/json does at several microseconds a
// record (10,000 took ~70 ms) and this codec at a fraction of one.
//
// Format 1, all integers as in encoding/binary:
//
//	byte      format, 1
//	uvarint×5 lengths of ID, JobID, Path, State, Error
//	bytes     ID‖JobID‖Path‖State‖Error, concatenated
//	varint    Size
//	time      CreatedAt, then CompletedAt: byte 0 for the zero time, or
//	          byte 1, varint Unix seconds, uvarint nanoseconds (UTC)
//	8 bytes   math.Float64bits(DumpSeconds), big-endian
//
// Adding a field to Checkpoint means adding it here (TestCheckpointCodec
// fails until then) and, if existing records need it filled in, a
// migration.
const checkpointFormat = 1

// errCorrupt is wrapped by decoding errors.
var errCorrupt = errors.New("corrupt record")

func encodeCheckpoint(c *Checkpoint) []byte {
	strs := [...]string{c.ID, c.JobID, c.Path, c.State, c.Error}
	n := 1 + 5*binary.MaxVarintLen64 + 3*binary.MaxVarintLen64 + 2*(1+2*binary.MaxVarintLen64) + 8
	for _, s := range strs {
		n += len(s)
	}
	b := make([]byte, 0, n)
	b = append(b, checkpointFormat)
	for _, s := range strs {
		b = binary.AppendUvarint(b, uint64(len(s)))
	}
	for _, s := range strs {
		b = append(b, s...)
	}
	b = binary.AppendVarint(b, c.Size)
	b = appendTime(b, c.CreatedAt)
	b = appendTime(b, c.CompletedAt)
	return binary.BigEndian.AppendUint64(b, math.Float64bits(c.DumpSeconds))
}

func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(b, 0)
	}
	b = append(b, 1)
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

// decodeCheckpoint decodes a record made by encodeCheckpoint. It copies
// what it keeps, so b may be reused afterwards.
func decodeCheckpoint(b []byte) (*Checkpoint, error) {
	c := new(Checkpoint)
	if err := decodeCheckpointInto(c, b); err != nil {
		return nil, err
	}
	return c, nil
}

// decodeCheckpointInto is decodeCheckpoint into *c, which it overwrites
// whole, so that a caller can decode many into one slice.
func decodeCheckpointInto(c *Checkpoint, b []byte) error {
	d := decoder{b: b}
	if f := d.byte(); f != checkpointFormat {
		if d.err == nil {
			d.err = fmt.Errorf("unknown checkpoint format %d", f)
		}
		return d.fail()
	}
	var lens [5]int
	total := 0
	for i := range lens {
		n := d.uvarint()
		if n > uint64(len(d.b)) {
			d.err = errors.New("string longer than record")
			return d.fail()
		}
		lens[i] = int(n)
		total += int(n)
	}
	all := string(d.bytes(total)) // one allocation for every string field
	if d.err != nil {
		return d.fail()
	}
	var strs [5]string
	for i, n := range lens {
		strs[i], all = all[:n], all[n:]
	}
	*c = Checkpoint{ID: strs[0], JobID: strs[1], Path: strs[2], State: strs[3], Error: strs[4]}
	c.Size = d.varint()
	c.CreatedAt = d.time()
	c.CompletedAt = d.time()
	c.DumpSeconds = math.Float64frombits(binary.BigEndian.Uint64(d.bytes(8)))
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return d.fail()
	}
	return nil
}

// decoder reads from b; the first error sticks and later reads return
// zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() error { return fmt.Errorf("decode checkpoint: %w: %w", errCorrupt, d.err) }

func (d *decoder) bytes(n int) []byte {
	if d.err != nil || n > len(d.b) {
		if d.err == nil {
			d.err = errors.New("truncated")
		}
		return make([]byte, n)
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) byte() byte { return d.bytes(1)[0] }

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errors.New("bad uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errors.New("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) time() time.Time {
	switch d.byte() {
	case 0:
		return time.Time{}
	case 1:
		sec, nsec := d.varint(), d.uvarint()
		if nsec >= 1e9 {
			d.err = errors.New("bad nanoseconds")
			return time.Time{}
		}
		return time.Unix(sec, int64(nsec)).UTC()
	default:
		if d.err == nil {
			d.err = errors.New("bad time tag")
		}
		return time.Time{}
	}
}
