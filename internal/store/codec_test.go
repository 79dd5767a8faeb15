package store

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fillAll sets every field of the struct v points to to a non-zero value,
// so that a codec that forgets a field fails a round trip.
func fillAll(t *testing.T, v any) {
	t.Helper()
	rv := reflect.ValueOf(v).Elem()
	for i := range rv.NumField() {
		f, name := rv.Field(i), rv.Type().Field(i).Name
		switch f.Interface().(type) {
		case string:
			f.SetString(name + "-é✓")
		case int64:
			f.SetInt(-int64(i+1) << 40)
		case float64:
			f.SetFloat(float64(i) + 0.25)
		case time.Time:
			f.Set(reflect.ValueOf(time.Date(2025, 6, i+1, 1, 2, 3, 456789012, time.UTC)))
		default:
			t.Fatalf("fillAll: %s has type %s, which the test (and probably the codec) does not handle", name, f.Type())
		}
	}
}

func TestCheckpointCodec(t *testing.T) {
	full := &Checkpoint{}
	fillAll(t, full)
	if n := reflect.TypeFor[Checkpoint]().NumField(); n != 9 {
		t.Fatalf("Checkpoint has %d fields, the codec encodes 9: update codec.go, then this test", n)
	}
	for _, tc := range []struct {
		name string
		c    *Checkpoint
	}{
		{"every field set", full},
		{"zero", &Checkpoint{}},
		{"before 1970 and far future", &Checkpoint{ID: "x", CreatedAt: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC),
			CompletedAt: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)}},
		{"extremes", &Checkpoint{Size: math.MinInt64, DumpSeconds: math.Inf(1), Path: strings.Repeat("p", 70000)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeCheckpoint(encodeCheckpoint(tc.c))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.c) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tc.c)
			}
		})
	}
	t.Run("times come back in UTC", func(t *testing.T) {
		local := time.Date(2025, 6, 1, 12, 0, 0, 0, time.FixedZone("CEST", 2*3600))
		got, err := decodeCheckpoint(encodeCheckpoint(&Checkpoint{CreatedAt: local}))
		if err != nil || !got.CreatedAt.Equal(local) || got.CreatedAt.Location() != time.UTC {
			t.Fatalf("CreatedAt = %v, %v; want %v in UTC", got.CreatedAt, err, local)
		}
	})
}

func TestDecodeCheckpointCorrupt(t *testing.T) {
	good := &Checkpoint{}
	fillAll(t, good)
	enc := encodeCheckpoint(good)
	cases := map[string][]byte{
		"empty":          {},
		"unknown format": append([]byte{2}, enc[1:]...),
		"trailing bytes": append(enc[:len(enc):len(enc)], 0),
		"huge length":    {1, 0xff, 0xff, 0xff, 0xff, 0x0f},
	}
	for i := 1; i < len(enc); i++ {
		cases[fmt.Sprintf("truncated to %d bytes", i)] = enc[:i]
	}
	for name, b := range cases {
		if c, err := decodeCheckpoint(b); !errors.Is(err, errCorrupt) {
			t.Errorf("%s: decode = %+v, %v; want a corrupt-record error", name, c, err)
		}
	}
}

func FuzzDecodeCheckpoint(f *testing.F) {
	for _, c := range []*Checkpoint{{}, {ID: "ckpt-1", JobID: "job-1", State: "complete", Size: 10, CreatedAt: time.Unix(1, 2)}} {
		f.Add(encodeCheckpoint(c))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeCheckpoint(b) // must not panic
		if err != nil {
			return
		}
		// Compare encodings rather than structs: NaN != NaN.
		enc := encodeCheckpoint(c)
		again, err := decodeCheckpoint(enc)
		if err != nil || !bytes.Equal(encodeCheckpoint(again), enc) {
			t.Fatalf("decoded %+v but its re-encoding decodes to %+v, %v", c, again, err)
		}
	})
}
