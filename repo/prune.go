package repo

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// Policy says which points to keep, per protected name. A point is kept
// when any rule keeps it. Each bucket rule keeps the newest point of each of
// the N most recent hours/days/weeks/months/years that have points.
type Policy struct {
	Last    int `json:"last"`
	Hourly  int `json:"hourly"`
	Daily   int `json:"daily"`
	Weekly  int `json:"weekly"`
	Monthly int `json:"monthly"`
	Yearly  int `json:"yearly"`
}

// Empty reports a policy that keeps nothing.
func (p Policy) Empty() bool { return p == Policy{} }

// PruneResult lists the decisions by point ID.
type PruneResult struct {
	Keep   []string `json:"keep"`
	Remove []string `json:"remove"`
}

// Plan applies the policy to points, newest first within each name.
func (p Policy) Plan(points []*Point) PruneResult {
	byName := map[string][]*Point{}
	for _, pt := range points {
		byName[pt.Kind+"\x00"+pt.Name] = append(byName[pt.Kind+"\x00"+pt.Name], pt)
	}
	var res PruneResult
	for _, pts := range byName {
		sort.Slice(pts, func(i, j int) bool { return pts[i].Time.After(pts[j].Time) })
		rules := []struct {
			n      int
			bucket func(t time.Time) string
		}{
			{p.Last, func(time.Time) string { return "" }},
			{p.Hourly, func(t time.Time) string { return t.Format("2006-01-02 15") }},
			{p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
			{p.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprint(y, w) }},
			{p.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
			{p.Yearly, func(t time.Time) string { return t.Format("2006") }},
		}
		left := make([]int, len(rules))
		last := make([]string, len(rules))
		for i, r := range rules {
			left[i] = r.n
			last[i] = "\x00unset"
		}
		for _, pt := range pts {
			keep := false
			t := pt.Time.Local()
			for i, r := range rules {
				if left[i] <= 0 {
					continue
				}
				b := r.bucket(t)
				if i == 0 || b != last[i] {
					keep = true
					left[i]--
					last[i] = b
				}
			}
			if keep {
				res.Keep = append(res.Keep, pt.ID)
			} else {
				res.Remove = append(res.Remove, pt.ID)
			}
		}
	}
	sort.Strings(res.Keep)
	sort.Strings(res.Remove)
	return res
}

// Prune deletes the manifests the policy does not keep. Data goes in gc.
func (r *Repository) Prune(ctx context.Context, p Policy, dryRun bool) (PruneResult, error) {
	if p.Empty() {
		return PruneResult{}, fmt.Errorf("prune: the policy keeps nothing; give at least one --keep-* rule")
	}
	pts, errs, err := r.Points(ctx)
	if err != nil {
		return PruneResult{}, err
	}
	if len(errs) > 0 {
		for id, e := range errs {
			return PruneResult{}, fmt.Errorf("prune: point %s does not load (%v); run verify", id, e)
		}
	}
	res := p.Plan(pts)
	if dryRun {
		return res, nil
	}
	for _, id := range res.Remove {
		if err := r.DeletePoint(ctx, id); err != nil {
			return res, err
		}
	}
	return res, nil
}
