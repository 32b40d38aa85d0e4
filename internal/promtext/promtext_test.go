package promtext

import (
	"math"
	"strings"
	"testing"
)

func TestWriter(t *testing.T) {
	var w Writer
	w.Family("lifeboat_jobs_finished_total", "counter", "Jobs finished, by kind and state.")
	w.Sample("lifeboat_jobs_finished_total", int64(3), "kind", "backup", "state", "succeeded")
	w.Sample("lifeboat_jobs_finished_total", 1, "kind", `we"ird\kind`, "state", "line\nfeed")
	w.Single("lifeboat_seconds", "gauge", `Help with a \ and a
line feed.`, 1.5)
	w.Single("lifeboat_big", "gauge", "Large float.", 1.7e12)
	w.Single("lifeboat_inf", "gauge", "Infinite.", math.Inf(1))
	w.Single("lifeboat_flag", "gauge", "A bool.", true)
	want := `# HELP lifeboat_jobs_finished_total Jobs finished, by kind and state.
# TYPE lifeboat_jobs_finished_total counter
lifeboat_jobs_finished_total{kind="backup",state="succeeded"} 3
lifeboat_jobs_finished_total{kind="we\"ird\\kind",state="line\nfeed"} 1
# HELP lifeboat_seconds Help with a \\ and a\nline feed.
# TYPE lifeboat_seconds gauge
lifeboat_seconds 1.5
# HELP lifeboat_big Large float.
# TYPE lifeboat_big gauge
lifeboat_big 1.7e+12
# HELP lifeboat_inf Infinite.
# TYPE lifeboat_inf gauge
lifeboat_inf +Inf
# HELP lifeboat_flag A bool.
# TYPE lifeboat_flag gauge
lifeboat_flag 1
`
	if got := string(w.Bytes()); got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
	s, err := Parse(w.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"lifeboat_jobs_finished_total", []string{"state", "succeeded", "kind", "backup"}, 3},
		{"lifeboat_jobs_finished_total", []string{"kind", `we"ird\kind`, "state", "line\nfeed"}, 1},
		{"lifeboat_seconds", nil, 1.5},
		{"lifeboat_big", nil, 1.7e12},
		{"lifeboat_inf", nil, math.Inf(1)},
	} {
		if v, ok := s.Get(c.name, c.labels...); !ok || v != c.want {
			t.Errorf("%s%v: %v, %v; want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	if got := s.Sum("lifeboat_jobs_finished_total"); got != 4 {
		t.Errorf("sum: %v, want 4", got)
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"9bad 1", "bad metric name"},
		{"m", "no value"},
		{"m abc", "value"},
		{"m 0x10", "value"},
		{"m 1 2 3", "at most a timestamp"},
		{"m 1 1.5", "timestamp"},
		{`m{a="1"`, "want ','"},
		{`m{a="1`, "unterminated"},
		{`m{a=1} 1`, "not quoted"},
		{`m{a="1",a="2"} 1`, "appears twice"},
		{`m{a="\t"} 1`, "unknown escape"},
		{`m{a="1" b="2"} 1`, "want ','"},
		{`m{1a="x"} 1`, "bad label name"},
		{"m 1\nm 2", "line 2: series m appears twice"},
		{"# TYPE m countr", "TYPE"},
		{"# HELP 1m x", "bad metric name"},
	} {
		_, err := Parse([]byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error with %q", c.in, err, c.want)
		}
	}
	s, err := Parse([]byte("# just a comment\n\nm{a=\"x\",} 2 1700000000000\nn NaN\n"))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Get("m", "a", "x"); v != 2 {
		t.Errorf("m: %v", v)
	}
	if v, ok := s.Get("n"); !ok || !math.IsNaN(v) {
		t.Errorf("n: %v %v", v, ok)
	}
}

// FuzzParse: Parse never panics, and what it accepts survives a write and
// a second parse unchanged.
func FuzzParse(f *testing.F) {
	f.Add([]byte("# HELP m x\n# TYPE m counter\nm{a=\"b\\\"c\"} 1.5\n"))
	f.Add([]byte("m 1 1700000000000\nn{x=\"\\n\"} -Inf\n"))
	f.Add([]byte("m{a=\"1\",} NaN"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			return
		}
		var w Writer
		for k, v := range s {
			// Keys are series in exposition syntax already.
			w.b.WriteString(k + " " + formatFloat(v) + "\n")
		}
		again, err := Parse(w.Bytes())
		if err != nil {
			t.Fatalf("re-parse of %q: %v", w.Bytes(), err)
		}
		if len(again) != len(s) {
			t.Fatalf("%d series, then %d", len(s), len(again))
		}
		for k, v := range s {
			v2, ok := again[k]
			if !ok || (v2 != v && !(math.IsNaN(v) && math.IsNaN(v2))) {
				t.Fatalf("series %s: %v, then %v (%v)", k, v, v2, ok)
			}
		}
	})
}
