// Package bench summarises and plots the timings of `cedana bench`:
// percentiles of a sample and a PNG of several samples side by side
// (gonum.org/v1/plot).
package bench

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Sample is a named set of durations.
type Sample struct {
	Name   string
	Values []time.Duration
}

// Percentile returns the p-th percentile (0–100) of s's values, by the
// nearest-rank method; 0 for an empty sample.
func (s Sample) Percentile(p float64) time.Duration {
	if len(s.Values) == 0 {
		return 0
	}
	v := append([]time.Duration(nil), s.Values...)
	sort.Slice(v, func(i, k int) bool { return v[i] < v[k] })
	rank := int(math.Ceil(p / 100 * float64(len(v))))
	if rank < 1 {
		rank = 1
	}
	return v[min(rank, len(v))-1]
}

// Summary is p50, p95, min and max of a sample.
type Summary struct {
	Name               string
	N                  int
	P50, P95, Min, Max time.Duration
}

// Summarize computes s's summary.
func (s Sample) Summarize() Summary {
	return Summary{Name: s.Name, N: len(s.Values), P50: s.Percentile(50), P95: s.Percentile(95), Min: s.Percentile(0), Max: s.Percentile(100)}
}

// Plot writes a PNG to path: every value of each sample as a dot in its
// own column (jittered), over a box plot of the sample, on a logarithmic
// time axis in seconds, so that a cold start and a restore ten times
// faster both stay readable.
func Plot(path, title string, samples []Sample) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = "time to ready (s, log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.ConstantTicks(secondTicks())
	names := make([]string, len(samples))
	for i, s := range samples {
		names[i] = fmt.Sprintf("%s (n=%d)\np50 %s", s.Name, len(s.Values), s.Percentile(50).Round(time.Millisecond))
		vals := make(plotter.Values, len(s.Values))
		pts := make(plotter.XYs, len(s.Values))
		for k, d := range s.Values {
			sec := math.Max(d.Seconds(), 1e-4)
			vals[k] = sec
			pts[k].X = float64(i) + 0.25*(float64(k%7)/6-0.5)
			pts[k].Y = sec
		}
		if len(vals) == 0 {
			continue
		}
		box, err := plotter.NewBoxPlot(vg.Points(40), float64(i), vals)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s.Name, err)
		}
		p.Add(box)
		sc, err := plotter.NewScatter(pts)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s.Name, err)
		}
		sc.GlyphStyle.Radius = vg.Points(2)
		p.Add(sc)
	}
	p.NominalX(names...)
	p.Add(plotter.NewGrid())
	if err := p.Save(6*vg.Inch, 4*vg.Inch, path); err != nil {
		return fmt.Errorf("write plot %s: %w", path, err)
	}
	return nil
}

// secondTicks labels 1-2-5 steps from 10 ms to 100 s.
func secondTicks() []plot.Tick {
	var ts []plot.Tick
	for _, v := range []float64{0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100} {
		ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
	}
	return ts
}
