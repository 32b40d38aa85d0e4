// Package promtext writes Prometheus' text exposition format (version
// 0.0.4), the format every Prometheus server and most agents scrape. The
// server and the agent each expose a handful of counters and gauges;
// this small writer keeps them off a client library and its dependency
// tree, and makes both speak the format the same way (escaping, value
// formatting, headers). Parse reads the same format back, for tests and
// tools that check what was exposed.
package promtext

import (
	"bytes"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
)

// ContentType is the Content-Type of the format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Writer collects one exposition in memory, so that a failure half-way
// through answers an error instead of a truncated scrape.
type Writer struct {
	b bytes.Buffer
}

// Family starts a metric family: its HELP and TYPE lines. typ is
// "counter", "gauge", "summary", "histogram" or "untyped".
func (w *Writer) Family(name, typ, help string) {
	fmt.Fprintf(&w.b, "# HELP %s %s\n# TYPE %s %s\n", name, escapeHelp(help), name, typ)
}

// Sample writes one sample. labels are name, value pairs, written in the
// order given; a dangling name is an error of the caller and panics.
func (w *Writer) Sample(name string, value any, labels ...string) {
	if len(labels)%2 != 0 {
		panic("promtext: labels must be name, value pairs")
	}
	w.b.WriteString(name)
	if len(labels) > 0 {
		w.b.WriteByte('{')
		for i := 0; i < len(labels); i += 2 {
			if i > 0 {
				w.b.WriteByte(',')
			}
			w.b.WriteString(labels[i])
			w.b.WriteString(`="`)
			w.b.WriteString(escapeLabel(labels[i+1]))
			w.b.WriteByte('"')
		}
		w.b.WriteByte('}')
	}
	w.b.WriteByte(' ')
	w.b.WriteString(formatValue(value))
	w.b.WriteByte('\n')
}

// Single writes a family of one unlabelled sample.
func (w *Writer) Single(name, typ, help string, value any) {
	w.Family(name, typ, help)
	w.Sample(name, value)
}

// Bytes is the exposition written so far.
func (w *Writer) Bytes() []byte { return w.b.Bytes() }

// Write answers an HTTP request with the exposition and its content type.
func (w *Writer) Write(rw http.ResponseWriter) {
	rw.Header().Set("Content-Type", ContentType)
	rw.Write(w.b.Bytes())
}

func formatValue(v any) string {
	switch x := v.(type) {
	case int:
		return strconv.Itoa(x)
	case int64:
		return strconv.FormatInt(x, 10)
	case uint64:
		return strconv.FormatUint(x, 10)
	case float64:
		return formatFloat(x)
	case bool:
		if x {
			return "1"
		}
		return "0"
	}
	return fmt.Sprint(v)
}

func formatFloat(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "+Inf"
	case math.IsInf(f, -1):
		return "-Inf"
	case math.IsNaN(f):
		return "NaN"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// escapeLabel escapes what the format requires in a label value:
// backslash, double quote and line feed. Everything else, UTF-8
// included, stays as it is.
func escapeLabel(s string) string {
	if !strings.ContainsAny(s, "\\\"\n") {
		return s
	}
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

// escapeHelp escapes backslash and line feed (HELP text may hold quotes).
func escapeHelp(s string) string {
	if !strings.ContainsAny(s, "\\\n") {
		return s
	}
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}
