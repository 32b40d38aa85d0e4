package console

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
)

func TestProtectionObjective(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	hourly := api.Group{ID: 1, Name: "g", Incremental: "1h"}
	daily := api.Group{ID: 2, Name: "d"}
	vm := func(group int64, last time.Duration) catalog.VMStatus {
		v := catalog.VMStatus{GroupID: group}
		if last >= 0 {
			v.LastPoint = now.Add(-last)
		}
		return v
	}
	for _, tc := range []struct {
		name      string
		v         catalog.VMStatus
		g         api.Group
		rpo, next string
	}{
		{"unprotected", vm(0, 10*time.Minute), api.Group{}, "unprotected", "—"},
		{"no point yet", vm(1, -1), hourly, "no point yet", "pending"},
		{"fresh hourly", vm(1, 10*time.Minute), hourly, "met", "in 50 min"},
		{"hourly within grace", vm(1, 74*time.Minute), hourly, "met", "due now"},
		{"hourly missed", vm(1, 76*time.Minute), hourly, "missed", "due now"},
		{"daily met", vm(2, 20*time.Hour), daily, "met", "in 4 h"},
		{"daily missed", vm(2, 31*time.Hour), daily, "missed", "due now"},
	} {
		got := protection(tc.v, tc.g, now)
		if got.RPO != tc.rpo || got.Next != tc.next {
			t.Errorf("%s: objective %q, next %q; want %q, %q", tc.name, got.RPO, got.Next, tc.rpo, tc.next)
		}
		if got.RPO == "missed" && got.Tip == "" {
			t.Errorf("%s: a missed objective needs a hint", tc.name)
		}
	}
}

func TestMonthGrid(t *testing.T) {
	now := time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)
	cal := monthGrid(time.Date(2026, 11, 3, 0, 0, 0, 0, time.UTC), map[string]int{"2026-11-25": 2, "2026-10-31": 1}, "2026-11-25", now)
	if cal.Month != "November 2026" || cal.Prev != "2026-10" || cal.Next != "2026-12" {
		t.Fatalf("header: %+v", cal)
	}
	// November 2026 starts on a Sunday: the grid starts Monday 26 October
	// and ends Sunday 6 December, six weeks.
	if len(cal.Weeks) != 6 || cal.Weeks[0][0].Date != "2026-10-26" || cal.Weeks[5][6].Date != "2026-12-06" {
		t.Fatalf("weeks: %d, first %s, last %s", len(cal.Weeks), cal.Weeks[0][0].Date, cal.Weeks[len(cal.Weeks)-1][6].Date)
	}
	days := 0
	for _, w := range cal.Weeks {
		for _, d := range w {
			if d.InMonth {
				days++
			}
			switch d.Date {
			case "2026-11-25":
				if d.Points != 2 || !d.Chosen || !d.Today {
					t.Errorf("25 November: %+v", d)
				}
			case "2026-10-31":
				if d.Points != 1 || d.InMonth {
					t.Errorf("31 October: %+v", d)
				}
			}
		}
	}
	if days != 30 {
		t.Errorf("%d days in November", days)
	}
}

func TestSameOrigin(t *testing.T) {
	for _, tc := range []struct {
		hdr  map[string]string
		want bool
	}{
		{map[string]string{"Origin": "https://lb:8443"}, true},
		{map[string]string{"Origin": "https://lb:8443", "Sec-Fetch-Site": "same-origin"}, true},
		{map[string]string{"Origin": "https://lb:8443", "Sec-Fetch-Site": "same-site"}, false},
		{map[string]string{"Origin": "https://lb:8443", "Sec-Fetch-Site": "cross-site"}, false},
		{map[string]string{"Origin": "https://evil:8443"}, false},
		{map[string]string{"Origin": "null"}, false},
		{map[string]string{"Referer": "https://lb:8443/protection"}, true},
		{map[string]string{"Referer": "https://lb:8444/protection"}, false},
		{map[string]string{}, false},
	} {
		r, _ := http.NewRequest("POST", "https://lb:8443/x", nil)
		for k, v := range tc.hdr {
			r.Header.Set(k, v)
		}
		if got := sameOrigin(r); got != tc.want {
			t.Errorf("%v: %v, want %v", tc.hdr, got, tc.want)
		}
	}
}

// The post-login redirect comes from the query string: it must stay on
// this site whatever it says.
func FuzzLocalNext(f *testing.F) {
	for _, s := range []string{"/", "/jobs?x=1", "//evil.example", "/\\evil", "https://evil", "", "/login", "jobs"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n := localNext(s)
		if !strings.HasPrefix(n, "/") || strings.HasPrefix(n, "//") || strings.HasPrefix(n, "/\\") {
			t.Fatalf("localNext(%q) = %q leaves the site", s, n)
		}
		if n != "/" && n != s {
			t.Fatalf("localNext(%q) = %q", s, n)
		}
	})
}
