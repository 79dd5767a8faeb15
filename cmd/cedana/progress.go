package main

import (
	"os"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress shows a bar on stderr when stderr is a terminal, and nothing
// otherwise. It implements checkpoint.Progress.
type progress struct {
	enabled bool
	bar     *progressbar.ProgressBar
}

func newProgress(want bool) *progress {
	return &progress{enabled: want && term.IsTerminal(int(os.Stderr.Fd()))}
}

func (p *progress) Start(step string, total int64) {
	if !p.enabled {
		return
	}
	p.Done()
	if total <= 0 {
		total = -1 // spinner
	}
	p.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(step),
		progressbar.OptionShowBytes(total > 0),
		progressbar.OptionThrottle(100_000_000),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetWidth(30),
	)
}

func (p *progress) Advance(done int64) {
	if p.bar != nil {
		_ = p.bar.Set64(done)
	}
}

func (p *progress) Done() {
	if p.bar != nil {
		_ = p.bar.Finish()
		p.bar = nil
	}
}

func (p *progress) close() { p.Done() }
