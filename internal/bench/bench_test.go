package bench

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	s := Sample{Values: []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{0, 1}, {50, 5}, {95, 10}, {100, 10}, {10, 1}, {11, 2}} {
		if got := s.Percentile(c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if (Sample{}).Percentile(50) != 0 {
		t.Error("empty sample")
	}
}

func TestPlotWritesPNG(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.png")
	err := Plot(path, "t", []Sample{{Name: "cold", Values: []time.Duration{3 * time.Second, 4 * time.Second}},
		{Name: "warm", Values: []time.Duration{200 * time.Millisecond, 300 * time.Millisecond}}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || len(b) < 8 || string(b[1:4]) != "PNG" {
		t.Fatalf("not a PNG: %v", err)
	}
}
