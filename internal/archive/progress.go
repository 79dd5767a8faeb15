package archive

import (
	"sync"
	"sync/atomic"
)

// progressStep is how many bytes pass between two progress callbacks.
const progressStep = 8 << 20

// progress turns byte counts from several goroutines into serialized,
// monotonic, rate-limited calls of a user callback.
type progress struct {
	fn       func(int64)
	total    atomic.Int64
	reported atomic.Int64
	mu       sync.Mutex // serializes fn
}

// newProgress returns nil when fn is nil; a nil *progress ignores calls.
func newProgress(fn func(int64)) *progress {
	if fn == nil {
		return nil
	}
	return &progress{fn: fn}
}

// add counts n more bytes and calls the callback when a step has passed.
func (p *progress) add(n int) {
	if p == nil {
		return
	}
	if t := p.total.Add(int64(n)); t-p.reported.Load() >= progressStep {
		p.report()
	}
}

// report calls the callback with the current total if it grew.
func (p *progress) report() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if t := p.total.Load(); t > p.reported.Load() {
		p.reported.Store(t)
		p.fn(t)
	}
}
