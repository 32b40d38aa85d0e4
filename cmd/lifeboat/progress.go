package main

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// progress draws a bar on a terminal and nothing otherwise, so piped
// output and --json stay clean.
type progress struct {
	e     *env
	label string
	start time.Time

	mu    sync.Mutex
	last  time.Time
	drawn bool
}

func newProgress(e *env, label string) *progress {
	return &progress{e: e, label: label, start: time.Now()}
}

func (p *progress) update(done, total int64) {
	if !p.e.tty {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if now.Sub(p.last) < 200*time.Millisecond && done < total {
		return
	}
	p.last = now
	frac := 0.0
	if total > 0 {
		frac = min(float64(done)/float64(total), 1)
	}
	const width = 30
	n := int(frac * width)
	rate := float64(done) / max(now.Sub(p.start).Seconds(), 0.001)
	fmt.Fprintf(p.e.stderr, "\r%s [%s%s] %3.0f%% %s/%s %s/s ", p.label, strings.Repeat("#", n), strings.Repeat(" ", width-n), frac*100, human(done), human(total), human(int64(rate)))
	p.drawn = true
}

func (p *progress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprintln(p.e.stderr)
	}
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
