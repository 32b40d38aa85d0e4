package promtext

import (
	"bufio"
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Samples are the samples of one exposition by series: Key(name,
// labels…) to value.
type Samples map[string]float64

// Key names a series: the metric name, then its labels sorted by name in
// the exposition's own syntax (`name{a="1",b="2"}`; just `name` without
// labels). labels are name, value pairs.
func Key(name string, labels ...string) string {
	if len(labels)%2 != 0 {
		panic("promtext: labels must be name, value pairs")
	}
	if len(labels) == 0 {
		return name
	}
	pairs := make([][2]string, 0, len(labels)/2)
	for i := 0; i < len(labels); i += 2 {
		pairs = append(pairs, [2]string{labels[i], labels[i+1]})
	}
	sort.Slice(pairs, func(i, j int) bool { return pairs[i][0] < pairs[j][0] })
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i, p := range pairs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p[0])
		b.WriteString(`="`)
		b.WriteString(escapeLabel(p[1]))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// Get is the value of a series, and whether the exposition has it.
func (s Samples) Get(name string, labels ...string) (float64, bool) {
	v, ok := s[Key(name, labels...)]
	return v, ok
}

// Sum adds the values of every series of a metric (all label values).
func (s Samples) Sum(name string) float64 {
	var sum float64
	for k, v := range s {
		if k == name || strings.HasPrefix(k, name+"{") {
			sum += v
		}
	}
	return sum
}

var types = map[string]bool{"counter": true, "gauge": true, "summary": true, "histogram": true, "untyped": true}

// Parse reads an exposition in the text format. It checks the syntax of
// every line (names, label quoting, values, HELP and TYPE lines) and
// refuses a series that appears twice; errors name the line.
func Parse(data []byte) (Samples, error) {
	out := Samples{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "#") {
			if err := parseComment(line); err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			continue
		}
		key, v, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("line %d: series %s appears twice", n, key)
		}
		out[key] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

func parseComment(line string) error {
	f := strings.Fields(line[1:])
	if len(f) < 2 || (f[0] != "HELP" && f[0] != "TYPE") {
		return nil // any other comment
	}
	if !validName(f[1], true) {
		return fmt.Errorf("# %s: bad metric name %q", f[0], f[1])
	}
	if f[0] == "TYPE" && (len(f) != 3 || !types[f[2]]) {
		return fmt.Errorf("# TYPE %s: want one of counter, gauge, summary, histogram, untyped", f[1])
	}
	return nil
}

func parseSample(line string) (string, float64, error) {
	i := strings.IndexAny(line, "{ \t")
	if i < 0 {
		return "", 0, fmt.Errorf("sample %q has no value", line)
	}
	name := line[:i]
	if !validName(name, true) {
		return "", 0, fmt.Errorf("bad metric name %q", name)
	}
	rest := line[i:]
	var labels []string
	if rest[0] == '{' {
		var err error
		labels, rest, err = parseLabels(rest[1:])
		if err != nil {
			return "", 0, fmt.Errorf("%s: %w", name, err)
		}
	}
	f := strings.Fields(rest)
	if len(f) < 1 || len(f) > 2 {
		return "", 0, fmt.Errorf("%s: want a value and at most a timestamp, got %q", name, strings.TrimSpace(rest))
	}
	v, err := parseValue(f[0])
	if err != nil {
		return "", 0, fmt.Errorf("%s: value %q: %w", name, f[0], err)
	}
	if len(f) == 2 {
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			return "", 0, fmt.Errorf("%s: timestamp %q is not milliseconds", name, f[1])
		}
	}
	return Key(name, labels...), v, nil
}

// parseLabels reads `a="x",b="y"}` and returns the pairs and what follows
// the closing brace.
func parseLabels(s string) ([]string, string, error) {
	var out []string
	seen := map[string]bool{}
	for {
		s = strings.TrimLeft(s, " \t")
		if strings.HasPrefix(s, "}") {
			return out, s[1:], nil
		}
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return nil, "", fmt.Errorf("label without '='")
		}
		name := strings.TrimSpace(s[:eq])
		if !validName(name, false) {
			return nil, "", fmt.Errorf("bad label name %q", name)
		}
		if seen[name] {
			return nil, "", fmt.Errorf("label %s appears twice", name)
		}
		seen[name] = true
		s = strings.TrimLeft(s[eq+1:], " \t")
		if !strings.HasPrefix(s, `"`) {
			return nil, "", fmt.Errorf("label %s: value is not quoted", name)
		}
		var val strings.Builder
		i, closed := 1, false
		for i < len(s) && !closed {
			switch c := s[i]; c {
			case '"':
				closed = true
			case '\\':
				if i+1 >= len(s) {
					return nil, "", fmt.Errorf("label %s: escape at the end of the line", name)
				}
				switch s[i+1] {
				case '\\':
					val.WriteByte('\\')
				case '"':
					val.WriteByte('"')
				case 'n':
					val.WriteByte('\n')
				default:
					return nil, "", fmt.Errorf("label %s: unknown escape \\%c", name, s[i+1])
				}
				i++
			case '\n':
				return nil, "", fmt.Errorf("label %s: line feed in value", name)
			default:
				val.WriteByte(c)
			}
			i++
		}
		if !closed {
			return nil, "", fmt.Errorf("label %s: unterminated value", name)
		}
		out = append(out, name, val.String())
		s = strings.TrimLeft(s[i:], " \t")
		switch {
		case strings.HasPrefix(s, ","):
			s = s[1:]
		case strings.HasPrefix(s, "}"):
		default:
			return nil, "", fmt.Errorf("label %s: want ',' or '}' after the value", name)
		}
	}
}

func parseValue(s string) (float64, error) {
	switch s {
	case "+Inf", "Inf":
		return strconv.ParseFloat("+Inf", 64)
	case "-Inf":
		return strconv.ParseFloat("-Inf", 64)
	case "NaN":
		return strconv.ParseFloat("NaN", 64)
	}
	// ParseFloat also takes "inf", "infinity", hex floats and
	// underscores; the format does not.
	if strings.ContainsAny(s, "_xXiInN") {
		return 0, fmt.Errorf("not a number")
	}
	return strconv.ParseFloat(s, 64)
}

// validName checks a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*) or a label
// name (the same without ':').
func validName(s string, metric bool) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9' || metric && c == ':'
		if !ok {
			return false
		}
	}
	return true
}
