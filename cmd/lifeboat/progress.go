package main

import (
	"fmt"
	"strconv"
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

	mu     sync.Mutex
	last   time.Time
	drawn  bool
	closed bool // done was called: later updates draw nothing
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
	if p.closed {
		return
	}
	now := time.Now()
	if now.Sub(p.last) < 200*time.Millisecond && (done < total || total <= 0) {
		return
	}
	p.last = now
	rate := float64(done) / max(now.Sub(p.start).Seconds(), 0.001)
	if total <= 0 {
		// Unknown total (a tape write): bytes and rate, no bar.
		fmt.Fprintf(p.e.stderr, "\r%s %s %s/s ", p.label, human(done), human(int64(rate)))
		p.drawn = true
		return
	}
	frac := 0.0
	if total > 0 {
		frac = min(float64(done)/float64(total), 1)
	}
	const width = 30
	n := int(frac * width)
	fmt.Fprintf(p.e.stderr, "\r%s [%s%s] %3.0f%% %s/%s %s/s ", p.label, strings.Repeat("#", n), strings.Repeat(" ", width-n), frac*100, human(done), human(total), human(int64(rate)))
	p.drawn = true
}

// bytes is update for work whose total is not known ahead.
func (p *progress) bytes(done int64) { p.update(done, 0) }

func (p *progress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn && !p.closed {
		fmt.Fprintln(p.e.stderr)
	}
	p.closed = true
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

// jsonRequested says whether args ask for --json (before a "--"):
// progress bars stay off then, even on a terminal, so that a script that
// captures stdout and shows stderr sees only the result.
func jsonRequested(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "json" {
			continue
		}
		if !hasVal {
			return true
		}
		b, err := strconv.ParseBool(val)
		return err == nil && b
	}
	return false
}
