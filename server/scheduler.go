package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/repo"
)

// Scheduler turns protection groups into backup jobs. Each round it
// looks at every member VM an agent reported: a VM with no backup job
// queued or running gets one when a full-read time of day has passed
// since its last, or its incremental interval has elapsed, or it has
// never been backed up. A job names the VM, not a node: it runs on
// whichever node owns the VM when an agent claims it, and the claim
// limits serialize backups per shared volume and per node. A member whose
// newest point is older than the group's objective raises an alert.
//
// The scheduler's clock is Config.Clock; its memory (when each VM was
// last scheduled) starts from the catalog's newest points.
type Scheduler struct {
	s   *Server
	now func() time.Time

	mu       sync.Mutex
	first    map[int64]time.Time // VM ID → when the scheduler first saw it
	last     map[int64]time.Time // VM ID → last job created (scheduler clock)
	lastFull map[int64]time.Time // VM ID → last full-read occurrence handled
	alerted  map[int64]time.Time // VM ID → last RPO alert (scheduler clock)
	poke     chan struct{}
}

func newScheduler(s *Server) *Scheduler {
	return &Scheduler{s: s, now: s.cfg.Clock, first: map[int64]time.Time{}, last: map[int64]time.Time{},
		lastFull: map[int64]time.Time{}, alerted: map[int64]time.Time{}, poke: make(chan struct{}, 1)}
}

// Poke runs a round soon (a group changed).
func (sc *Scheduler) Poke() {
	select {
	case sc.poke <- struct{}{}:
	default:
	}
}

// Run runs rounds every Config.Tick until ctx ends.
func (sc *Scheduler) Run(ctx context.Context) {
	t := time.NewTicker(sc.s.cfg.Tick)
	defer t.Stop()
	for {
		if _, err := sc.Round(ctx); err != nil && ctx.Err() == nil {
			sc.s.log.Error("scheduling round", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-sc.poke:
		}
	}
}

// Round creates the jobs that are due now and returns them.
func (sc *Scheduler) Round(ctx context.Context) ([]catalog.Job, error) {
	now := sc.now()
	groups, err := sc.s.cat.ListGroups(ctx)
	if err != nil {
		return nil, err
	}
	if len(groups) == 0 {
		return nil, nil
	}
	byID := map[int64]catalog.Group{}
	for _, g := range groups {
		byID[g.ID] = g
	}
	vms, err := sc.s.cat.ListVMs(ctx, catalog.VMFilter{})
	if err != nil {
		return nil, err
	}
	active, err := sc.activeBackups(ctx)
	if err != nil {
		return nil, err
	}
	sc.mu.Lock()
	var jobs []catalog.Job
	type mark struct {
		vm   int64
		full time.Time
	}
	var marks []mark
	var late []catalog.VMStatus
	for _, v := range vms {
		g, ok := byID[v.GroupID]
		if !ok || v.OwnerNodeID == 0 || v.State == catalog.VMAbsent {
			continue
		}
		if _, seen := sc.first[v.ID]; !seen {
			sc.first[v.ID] = now
			sc.lastFull[v.ID] = now
			if !v.LastPoint.IsZero() {
				sc.last[v.ID] = now.Add(-max(time.Since(v.LastPoint), 0))
			}
		}
		if sc.missedRPO(g, v, now) {
			late = append(late, v)
		}
		if active[v.ID] {
			continue
		}
		full, occ := sc.fullDue(g, v.ID, now)
		last, scheduled := sc.last[v.ID]
		reason := ""
		switch {
		case full:
			reason = "full-schedule"
		case !scheduled:
			reason = "first"
		case g.Incremental > 0 && now.Sub(last) >= g.Incremental:
			reason = "schedule"
		default:
			continue
		}
		params, _ := json.Marshal(api.BackupParams{FullRead: full, Group: g.Name, Reason: reason, NoOfflineFallback: !g.OfflineFallback})
		jobs = append(jobs, catalog.Job{Kind: catalog.KindBackup, VMID: v.ID, GroupID: g.ID, Params: params})
		marks = append(marks, mark{v.ID, occ})
	}
	sc.mu.Unlock()
	for _, v := range late {
		sc.alertRPO(ctx, byID[v.GroupID], v, now)
	}
	if len(jobs) == 0 {
		return nil, nil
	}
	out, err := sc.s.cat.CreateJobs(ctx, jobs)
	if err != nil {
		return nil, err
	}
	sc.mu.Lock()
	for _, m := range marks {
		sc.last[m.vm] = now
		if !m.full.IsZero() {
			sc.lastFull[m.vm] = m.full
		}
	}
	sc.mu.Unlock()
	sc.s.log.Info("scheduled backups", "jobs", len(out))
	sc.s.notify.broadcast()
	return out, nil
}

// fullDue reports whether a full-read time of day passed since the VM's
// last full, and which occurrence.
func (sc *Scheduler) fullDue(g catalog.Group, vm int64, now time.Time) (bool, time.Time) {
	if len(g.FullTimes) == 0 {
		return false, time.Time{}
	}
	loc, err := time.LoadLocation(g.TimeZone)
	if err != nil {
		loc = time.UTC
	}
	local := now.In(loc)
	var newest time.Time
	for _, ft := range g.FullTimes {
		t, err := time.Parse("15:04", ft)
		if err != nil {
			continue
		}
		occ := time.Date(local.Year(), local.Month(), local.Day(), t.Hour(), t.Minute(), 0, 0, loc)
		if occ.After(local) {
			occ = occ.AddDate(0, 0, -1)
		}
		if occ.After(newest) {
			newest = occ
		}
	}
	if newest.IsZero() || !newest.After(sc.lastFull[vm]) {
		return false, time.Time{}
	}
	return true, newest
}

// objective is how old a group's newest point may get: twice the
// incremental interval, or a day and an hour between full reads.
func objective(g catalog.Group) time.Duration {
	switch {
	case g.Incremental > 0:
		return 2 * g.Incremental
	case len(g.FullTimes) > 0:
		return 25 * time.Hour
	}
	return 0
}

func (sc *Scheduler) missedRPO(g catalog.Group, v catalog.VMStatus, now time.Time) bool {
	rpo := objective(g)
	if rpo == 0 {
		return false
	}
	since := sc.first[v.ID]
	if !v.LastPoint.IsZero() {
		since = now.Add(-max(time.Since(v.LastPoint), 0))
	}
	if now.Sub(since) <= rpo || now.Sub(sc.alerted[v.ID]) < rpo {
		return false
	}
	sc.alerted[v.ID] = now
	return true
}

func (sc *Scheduler) alertRPO(ctx context.Context, g catalog.Group, v catalog.VMStatus, now time.Time) {
	msg := fmt.Sprintf("VM %s of group %s has no point newer than the objective of %s", v.Name, g.Name, objective(g))
	if !v.LastPoint.IsZero() {
		msg = fmt.Sprintf("VM %s of group %s: newest point is from %s, older than the objective of %s",
			v.Name, g.Name, v.LastPoint.Format(time.RFC3339), objective(g))
	}
	if _, err := sc.s.cat.RaiseAlert(ctx, catalog.Alert{Kind: "rpo-missed", Severity: catalog.SeverityWarning, Subject: "vm:" + v.Name, Message: msg}); err != nil {
		sc.s.log.Error("raise alert", "err", err)
	}
}

func (sc *Scheduler) activeBackups(ctx context.Context) (map[int64]bool, error) {
	js, err := sc.s.cat.ListJobs(ctx, catalog.JobFilter{Kinds: []string{catalog.KindBackup},
		States: []string{catalog.JobQueued, catalog.JobRunning}, Limit: 1 << 20})
	if err != nil {
		return nil, err
	}
	out := map[int64]bool{}
	for _, j := range js {
		if j.VMID != 0 {
			out[j.VMID] = true
		}
	}
	return out, nil
}

// RunGroup queues a backup now for every member VM an agent reported that
// has none queued or running.
func (sc *Scheduler) RunGroup(ctx context.Context, g catalog.Group, reason string) ([]catalog.Job, error) {
	vms, err := sc.s.cat.ListVMs(ctx, catalog.VMFilter{GroupID: g.ID})
	if err != nil {
		return nil, err
	}
	active, err := sc.activeBackups(ctx)
	if err != nil {
		return nil, err
	}
	params, _ := json.Marshal(api.BackupParams{Group: g.Name, Reason: reason, NoOfflineFallback: !g.OfflineFallback})
	var jobs []catalog.Job
	for _, v := range vms {
		if v.OwnerNodeID == 0 || v.State == catalog.VMAbsent || active[v.ID] {
			continue
		}
		jobs = append(jobs, catalog.Job{Kind: catalog.KindBackup, VMID: v.ID, GroupID: g.ID, Params: params})
	}
	if len(jobs) == 0 {
		return nil, nil
	}
	out, err := sc.s.cat.CreateJobs(ctx, jobs)
	if err != nil {
		return nil, err
	}
	now := sc.now()
	sc.mu.Lock()
	for _, j := range out {
		sc.last[j.VMID] = now
	}
	sc.mu.Unlock()
	sc.s.notify.broadcast()
	return out, nil
}

// ---- the server's own jobs ---------------------------------------------------------

// runServerJobs claims and runs the jobs that belong to no node: prune,
// verify, gc.
func (s *Server) runServerJobs(ctx context.Context) {
	for {
		ch := s.notify.wait()
		j, err := s.cat.ClaimNext(ctx, 0, s.limits())
		if err == nil {
			s.runServerJob(ctx, j)
			continue
		}
		if !errors.Is(err, catalog.ErrNotFound) && ctx.Err() == nil {
			s.log.Error("claim server job", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-time.After(2 * time.Second):
		}
	}
}

func (s *Server) runServerJob(ctx context.Context, j catalog.Job) {
	var result any
	var err error
	switch j.Kind {
	case catalog.KindVerify:
		var rep *repo.VerifyReport
		rep, err = s.repo.Verify(ctx, nil)
		if err == nil && !rep.OK {
			err = fmt.Errorf("%d bad objects affect %d points", len(rep.Problems), len(rep.Affected))
		}
		result = rep
	case catalog.KindGC:
		var p api.GCParams
		json.Unmarshal(j.Params, &p)
		grace := time.Hour
		if p.Grace != "" {
			grace, _ = time.ParseDuration(p.Grace)
		}
		result, err = s.repo.GC(ctx, grace)
		if errors.Is(err, repo.ErrLocked) {
			s.cat.DeferJob(ctx, j.ID, time.Now().Add(time.Minute), "repository busy: "+err.Error())
			return
		}
	case catalog.KindPrune:
		var p api.PruneParams
		json.Unmarshal(j.Params, &p)
		result, err = s.prune(ctx, j, p)
	case catalog.KindTape:
		var p api.TapeWriteParams
		json.Unmarshal(j.Params, &p)
		result, err = s.writeTape(ctx, p)
	default:
		err = fmt.Errorf("the server does not run %s jobs", j.Kind)
	}
	state, errText := catalog.JobSucceeded, ""
	if err != nil {
		state, errText = catalog.JobFailed, err.Error()
	}
	res, _ := json.Marshal(result)
	if ferr := s.cat.FinishJob(context.WithoutCancel(ctx), j.ID, state, res, errText); ferr != nil {
		s.log.Error("finish server job", "job", j.ID, "err", ferr)
	}
	s.jobFinished(context.WithoutCancel(ctx), j, state, errText)
}

// queuePrune queues a group's retention unless one is already queued.
func (s *Server) queuePrune(ctx context.Context, g catalog.Group) {
	js, err := s.cat.ListJobs(ctx, catalog.JobFilter{Kinds: []string{catalog.KindPrune}, States: []string{catalog.JobQueued}, GroupID: g.ID, Limit: 1})
	if err != nil || len(js) > 0 {
		return
	}
	params, _ := json.Marshal(api.PruneParams{Group: g.Name})
	if _, err := s.cat.CreateJob(ctx, catalog.Job{Kind: catalog.KindPrune, GroupID: g.ID, Params: params}); err != nil {
		s.log.Error("queue prune", "group", g.Name, "err", err)
		return
	}
	s.notify.broadcast()
}

// prune applies a group's retention (or an explicit policy) and unlists
// what it removed. The data goes at the next gc.
func (s *Server) prune(ctx context.Context, j catalog.Job, p api.PruneParams) (repo.PruneResult, error) {
	res := repo.PruneResult{Keep: []string{}, Remove: []string{}}
	if p.Policy != nil && !p.Policy.Empty() {
		r, err := s.repo.Prune(ctx, *p.Policy, p.DryRun)
		if err != nil {
			return r, err
		}
		if !p.DryRun {
			for _, id := range r.Remove {
				if err := s.cat.DeletePoint(ctx, id); err != nil && !errors.Is(err, catalog.ErrNotFound) {
					return r, err
				}
			}
		}
		return r, nil
	}
	var g catalog.Group
	var err error
	if j.GroupID != 0 {
		g, err = s.cat.GetGroup(ctx, j.GroupID)
	} else {
		g, err = s.cat.GroupByName(ctx, p.Group)
	}
	if err != nil {
		return res, err
	}
	if g.RetentionCount <= 0 && g.RetentionDays <= 0 {
		return res, nil // the group keeps everything
	}
	cutoff := time.Now().AddDate(0, 0, -g.RetentionDays)
	for _, name := range g.Members {
		pts, err := s.cat.ListPoints(ctx, catalog.PointFilter{Name: name})
		if err != nil {
			return res, err
		}
		for i, pt := range pts { // newest first
			keep := i == 0 ||
				(g.RetentionCount > 0 && i < g.RetentionCount) ||
				(g.RetentionDays > 0 && pt.Time.After(cutoff))
			if keep {
				res.Keep = append(res.Keep, pt.ID)
				continue
			}
			res.Remove = append(res.Remove, pt.ID)
			if p.DryRun {
				continue
			}
			if err := s.repo.DeletePoint(ctx, pt.ID); err != nil {
				return res, err
			}
			if err := s.cat.DeletePoint(ctx, pt.ID); err != nil && !errors.Is(err, catalog.ErrNotFound) {
				return res, err
			}
		}
	}
	if len(res.Remove) > 0 {
		s.log.Info("pruned", "group", g.Name, "removed", len(res.Remove), "kept", len(res.Keep))
	}
	return res, nil
}
