package console

import (
	"fmt"
	"html/template"
	"io/fs"
	"math"
	"strings"
	"time"
)

// pageNames are the templates besides layout.html; each is parsed with
// the layout into a template set of its own.
var pageNames = []string{"login", "overview", "protection", "wizard", "group", "recovery", "items", "jobs", "job", "tapes", "alerts", "error"}

func parsePages() (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"bytes": humanBytes,
		"when": func(t time.Time) string {
			if t.IsZero() {
				return "—"
			}
			return t.UTC().Format("2006-01-02 15:04:05")
		},
		"clock":      func(t time.Time) string { return t.UTC().Format("15:04:05") },
		"ago":        func(t time.Time) string { return ago(time.Now(), t) },
		"pct":        func(f float64) string { return fmt.Sprintf("%.0f%%", math.Max(0, math.Min(1, f))*100) },
		"stateClass": stateClass,
		"took": func(a, b time.Time) string {
			if a.IsZero() {
				return "—"
			}
			if b.IsZero() {
				b = time.Now()
			}
			return human(b.Sub(a))
		},
		"join":  strings.Join,
		"deref": func(b *bool) bool { return b != nil && *b },
		// every turns a Go duration ("1h0m0s") into words ("1 h").
		"every": func(s string) string {
			d, err := time.ParseDuration(s)
			if err != nil {
				return s
			}
			return human(d)
		},
		"plural": func(n any, word string) string { return plural(n, word) },
		"add":    func(a, b int) int { return a + b },
	}
	out := map[string]*template.Template{}
	layout, err := fs.ReadFile(templateFS, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("console: templates: %w", err)
	}
	for _, name := range pageNames {
		t, err := template.New("layout").Funcs(funcs).Parse(string(layout))
		if err != nil {
			return nil, fmt.Errorf("console: layout.html: %w", err)
		}
		if _, err := t.ParseFS(templateFS, "templates/"+name+".html"); err != nil {
			return nil, fmt.Errorf("console: %s.html: %w", name, err)
		}
		out[name] = t
	}
	return out, nil
}

// stateClass maps a job, VM or alert state to its colour class.
func stateClass(s string) string {
	switch s {
	case "succeeded", "running", "enrolled", "healthy", "met", "ok", "info", "available":
		return "ok"
	case "queued", "paused", "saved", "migrating", "warning", "pending", "off", "full":
		return "warn"
	case "failed", "canceled", "revoked", "critical", "missed", "absent", "error":
		return "bad"
	}
	return "muted"
}

func humanBytes(n int64) string {
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

// human is a duration as an operator reads it: "3 min", "2 h 5 min".
func human(d time.Duration) string {
	switch {
	case d < 0:
		d = -d
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d s", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d min", int(d.Minutes()))
	case d < 48*time.Hour:
		h := int(d.Hours())
		if m := int(d.Minutes()) % 60; m != 0 {
			return fmt.Sprintf("%d h %d min", h, m)
		}
		return fmt.Sprintf("%d h", h)
	default:
		return fmt.Sprintf("%d days", int(d.Hours()/24))
	}
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	if t.After(now) {
		return "just now"
	}
	return human(now.Sub(t)) + " ago"
}

// plural is "1 point", "2 points".
func plural(n any, word string) string {
	if fmt.Sprint(n) == "1" {
		return "1 " + word
	}
	return fmt.Sprint(n) + " " + word + "s"
}
