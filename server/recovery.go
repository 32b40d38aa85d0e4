package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/recovery"
	"lifeboat/repo"
)

// Recovery through the API. The agent of the host a recovery writes to
// does the work, so it also does the checking: a preflight is a recovery
// job with PreflightOnly set, which the agent answers with the plan (or
// the refusal) without writing anything; the server waits for it. A real
// recovery job checks again before it writes, so a plan that went stale
// between the two is refused, not half-run.

// preflightTimeout bounds how long POST /recoveries/preflight waits for
// the agent; agents long-poll, so a healthy one answers in well under a
// second plus the checks' own time.
const preflightTimeout = 60 * time.Second

// Codes of refusals the server itself makes before asking an agent; they
// share the agent's LB- code space (recovery package).
const (
	codeHostUnreachable = "LB-40002"
	codePointUnusable   = "LB-40001"
)

// recoveryMethods are the methods the API runs (instant recovery and
// rebuild stay CLI operations on a host). Tape runs on the server, the
// others on an agent.
var recoveryMethods = map[string]bool{"original": true, "vm": true, "folder": true, "tape": true}

// checkRecovery validates a request and resolves its node. On failure it
// has answered: 4xx for a malformed request, or (refusal non-nil) a plan
// that refuses with a code, for conditions an operator can fix.
func (s *Server) checkRecovery(w http.ResponseWriter, r *http.Request, req *api.RecoveryRequest) (catalog.Node, catalog.Point, *api.RecoveryPlan, bool) {
	var n catalog.Node
	var pt catalog.Point
	if !recoveryMethods[req.Method] {
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("method %q: use original, vm, folder or tape", req.Method))
		return n, pt, nil, false
	}
	if req.Method == "tape" {
		if err := checkTapeParams(api.TapeWriteParams{Point: req.Point, Library: req.Library}); err != nil {
			fail(w, http.StatusBadRequest, "bad_request", err.Error())
			return n, pt, nil, false
		}
		var err error
		if pt, err = s.cat.GetPoint(r.Context(), req.Point); err != nil {
			s.catalogError(w, r, err)
			return n, pt, nil, false
		}
		return n, pt, s.tapePreflight(r.Context(), *req, pt), true
	}
	if !repo.ValidPointID(req.Point) {
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("point %q is not a point ID", req.Point))
		return n, pt, nil, false
	}
	if req.Dir != "" {
		if err := api.CheckAbsPath("dir", req.Dir); err != nil {
			fail(w, http.StatusBadRequest, "bad_request", err.Error())
			return n, pt, nil, false
		}
	}
	if req.Method != "original" && req.Dir == "" {
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("method %s needs dir: the target folder on the node", req.Method))
		return n, pt, nil, false
	}
	if req.Name != "" {
		if err := api.CheckVMName(req.Name); err != nil {
			fail(w, http.StatusBadRequest, "bad_request", err.Error())
			return n, pt, nil, false
		}
	}
	if req.HAResource != "" {
		if err := api.CheckName("ha_resource", req.HAResource); err != nil {
			fail(w, http.StatusBadRequest, "bad_request", err.Error())
			return n, pt, nil, false
		}
	}
	switch req.Chain {
	case "", "keep", "merge":
	default:
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("chain %q: use keep or merge", req.Chain))
		return n, pt, nil, false
	}
	var err error
	if pt, err = s.cat.GetPoint(r.Context(), req.Point); err != nil {
		s.catalogError(w, r, err)
		return n, pt, nil, false
	}
	plan := newPlan(*req, pt, "")
	// advice for a node whose agent is not ready depends on who chose it.
	advice := "recover to a host whose agent is enrolled and sends heartbeats (see the Overview page or `lifeboat cluster`)"
	if req.Node == "" {
		if req.Method != "original" {
			fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("method %s needs node: the host that receives the files (one with an enrolled agent)", req.Method))
			return n, pt, nil, false
		}
		// Method 1 runs where the VM runs now, else where the point was
		// taken (the agent then finds the VM gone and says so).
		if n, err = s.ownerOf(r.Context(), pt); err != nil {
			s.catalogError(w, r, err)
			return n, pt, nil, false
		}
		if n.ID == 0 {
			plan.Refuse("LB-32579", fmt.Sprintf("VM %s runs on no node with an agent, and its point's host %q has none", pt.Name, pt.Host),
				"the VM's cluster resource no longer exists; recover it as a VM on a host instead (method 2), choosing its original host")
			return n, pt, plan, true
		}
		advice = "bring the node's agent back, or recover as a VM on another host (method 2)"
	} else {
		var ok bool
		if n, ok = s.nodeRef(w, r, req.Node); !ok {
			return n, pt, nil, false
		}
	}
	plan.Node = n.Name
	if req.Method == "original" {
		busy, err := s.vmBusy(r.Context(), pt.Name, 0)
		if err != nil {
			s.catalogError(w, r, err)
			return n, pt, nil, false
		}
		if busy != "" {
			plan.Check("vm idle", false, busy)
			plan.Refuse(recovery.CodeVMBusy, busy,
				"wait for that job to end (Jobs page, or `lifeboat job list`), or cancel it, then recover in place")
			return n, pt, plan, true
		}
	}
	if bad := s.nodeUnready(n); bad != "" {
		plan.Check("agent", false, bad)
		plan.Refuse(codeHostUnreachable, bad, advice)
		return n, pt, plan, true
	}
	return n, pt, nil, true
}

// newPlan starts the plan the server answers with when it refuses by
// itself (the agent's plans come whole from its job).
func newPlan(req api.RecoveryRequest, pt catalog.Point, node string) *api.RecoveryPlan {
	return &api.RecoveryPlan{Method: req.Method, Point: req.Point, VM: pt.Name, Node: node, Dir: req.Dir, Checks: []api.RecoveryCheck{}}
}

// nodeUnready says why a node cannot run a recovery now, or "".
func (s *Server) nodeUnready(n catalog.Node) string {
	if n.State != catalog.NodeEnrolled {
		return fmt.Sprintf("node %s has no enrolled agent (state %s)", n.Name, n.State)
	}
	if stale := 3 * s.cfg.HeartbeatInterval; n.LastHeartbeat.IsZero() || time.Since(n.LastHeartbeat) > stale {
		return fmt.Sprintf("the agent of node %s has not sent a heartbeat for over %s", n.Name, stale)
	}
	return ""
}

// ownerOf is the node running the point's VM now, or the node the point
// was taken on; a zero Node when neither has an agent.
func (s *Server) ownerOf(ctx context.Context, pt catalog.Point) (catalog.Node, error) {
	vms, err := s.cat.ListVMs(ctx, catalog.VMFilter{Name: pt.Name})
	if err != nil {
		return catalog.Node{}, err
	}
	for _, v := range vms {
		if v.OwnerNodeID != 0 && v.State != "absent" {
			return s.cat.GetNode(ctx, v.OwnerNodeID)
		}
	}
	if pt.Host == "" {
		return catalog.Node{}, nil
	}
	n, err := s.cat.NodeByName(ctx, pt.Host)
	if errors.Is(err, catalog.ErrNotFound) {
		return catalog.Node{}, nil
	}
	return n, err
}

// recoveryJob queues a recovery job for the node.
func (s *Server) recoveryJob(ctx context.Context, n catalog.Node, pt catalog.Point, req api.RecoveryRequest, preflight bool) (catalog.Job, error) {
	req.Node = n.Name
	params := api.RecoveryParams{Recovery: req, PreflightOnly: preflight}
	if n.ClusterID != 0 {
		vols, err := s.cat.ListSharedVolumes(ctx, n.ClusterID)
		if err != nil {
			return catalog.Job{}, err
		}
		for _, v := range vols {
			params.SharedVolumes = append(params.SharedVolumes, v.Path)
		}
	}
	raw, err := json.Marshal(params)
	if err != nil {
		return catalog.Job{}, err
	}
	j, err := s.cat.CreateJob(ctx, catalog.Job{Kind: catalog.KindRecovery, VMName: pt.Name, TargetNodeID: n.ID, Params: raw})
	if err != nil {
		return j, err
	}
	s.notify.broadcast()
	return j, nil
}

// handlePreflight is POST /recoveries/preflight: the verdict, before
// anything runs.
func (s *Server) handlePreflight(w http.ResponseWriter, r *http.Request) {
	var req api.RecoveryRequest
	if !decode(w, r, &req) {
		return
	}
	n, pt, refused, ok := s.checkRecovery(w, r, &req)
	if !ok {
		return
	}
	if refused != nil || req.Method == "tape" {
		writeJSON(w, http.StatusOK, refused)
		return
	}
	j, err := s.recoveryJob(r.Context(), n, pt, req, true)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), preflightTimeout)
	defer cancel()
	j, err = s.waitJob(ctx, j.ID)
	if err != nil {
		// Nobody will want this preflight's answer any more.
		s.cat.CancelJob(context.WithoutCancel(r.Context()), j.ID)
		if r.Context().Err() != nil {
			return
		}
		plan := newPlan(req, pt, n.Name)
		plan.Refuse(codeHostUnreachable, fmt.Sprintf("the agent of node %s did not answer the preflight within %s (job %d)", n.Name, preflightTimeout, j.ID),
			"check the node's agent (Overview page); a busy agent runs at most a few jobs at once")
		writeJSON(w, http.StatusOK, plan)
		return
	}
	var res api.RecoveryResult
	if j.State != catalog.JobSucceeded || json.Unmarshal(j.Result, &res) != nil || res.Plan.Method == "" {
		plan := newPlan(req, pt, n.Name)
		plan.Refuse(codePointUnusable, fmt.Sprintf("the preflight on node %s failed: %s", n.Name, j.Error), "see job "+fmt.Sprint(j.ID)+"'s log")
		writeJSON(w, http.StatusOK, plan)
		return
	}
	if res.Plan.Checks == nil {
		res.Plan.Checks = []api.RecoveryCheck{}
	}
	writeJSON(w, http.StatusOK, res.Plan)
}

// handleRecover is POST /recoveries: queue the recovery; the agent checks
// again before it writes, and fails the job with the refusal's code.
func (s *Server) handleRecover(w http.ResponseWriter, r *http.Request) {
	var req api.RecoveryRequest
	if !decode(w, r, &req) {
		return
	}
	n, pt, refused, ok := s.checkRecovery(w, r, &req)
	if !ok {
		return
	}
	if refused != nil && !refused.OK {
		writeJSON(w, http.StatusConflict, struct {
			api.Error
			Plan *api.RecoveryPlan `json:"plan"`
		}{api.Error{Error: refused.Code + ": " + refused.Message + "; " + refused.Advice, Code: refused.Code}, refused})
		return
	}
	var j catalog.Job
	var err error
	if req.Method == "tape" {
		params, _ := json.Marshal(api.TapeWriteParams{Point: req.Point, Library: req.Library})
		j, err = s.cat.CreateJob(r.Context(), catalog.Job{Kind: catalog.KindTape, VMName: pt.Name, Params: params})
		s.notify.broadcast()
	} else {
		j, err = s.recoveryJob(r.Context(), n, pt, req, false)
	}
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, j)
}

// waitJob polls a job until it is done or ctx ends.
func (s *Server) waitJob(ctx context.Context, id int64) (catalog.Job, error) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		j, err := s.cat.GetJob(ctx, id)
		if err != nil {
			return catalog.Job{ID: id}, err
		}
		if j.Done() {
			return j, nil
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-t.C:
		}
	}
}

// vmBusy says which running job an in-place recovery of VM name would
// collide with: a backup reading its disks, or another in-place recovery
// (queued or running) writing them. except is a recovery job to leave out
// (the one asking). "" when none.
func (s *Server) vmBusy(ctx context.Context, name string, except int64) (string, error) {
	backups, err := s.cat.ListJobs(ctx, catalog.JobFilter{Kinds: []string{catalog.KindBackup}, States: []string{catalog.JobRunning}, VMName: name})
	if err != nil {
		return "", err
	}
	if len(backups) > 0 {
		return fmt.Sprintf("a backup of VM %s is running (job %d)", name, backups[0].ID), nil
	}
	j, err := s.inPlaceRecovery(ctx, name, []string{catalog.JobQueued, catalog.JobRunning}, except)
	if err != nil || j.ID == 0 {
		return "", err
	}
	return fmt.Sprintf("an in-place recovery of VM %s is %s (job %d)", name, j.State, j.ID), nil
}

// inPlaceRecovery finds a method-1 recovery job of VM name in one of the
// states, other than job except; its ID is 0 when there is none.
func (s *Server) inPlaceRecovery(ctx context.Context, name string, states []string, except int64) (catalog.Job, error) {
	js, err := s.cat.ListJobs(ctx, catalog.JobFilter{Kinds: []string{catalog.KindRecovery}, States: states, VMName: name})
	if err != nil {
		return catalog.Job{}, err
	}
	for _, j := range js {
		var p api.RecoveryParams
		if j.ID == except || json.Unmarshal(j.Params, &p) != nil {
			continue
		}
		if p.Recovery.Method == "original" && !p.PreflightOnly {
			return j, nil
		}
	}
	return catalog.Job{}, nil
}

// claimConflict says why a job just claimed must wait: a backup of a VM
// that is being recovered in place, or an in-place recovery of a VM whose
// backup (or another in-place recovery) runs. The preflight refuses such
// a recovery, but a job queued before the other started is only caught
// here. Of two such jobs claimed at once, the later-started one yields,
// so exactly one runs. "" when j may run.
func (s *Server) claimConflict(ctx context.Context, j catalog.Job) (string, error) {
	var rivals []catalog.Job
	switch {
	case j.Kind == catalog.KindBackup && j.VMName != "":
		rec, err := s.inPlaceRecovery(ctx, j.VMName, []string{catalog.JobRunning}, j.ID)
		if err != nil {
			return "", err
		}
		if rec.ID != 0 {
			rivals = append(rivals, rec)
		}
	case j.Kind == catalog.KindRecovery:
		var p api.RecoveryParams
		if json.Unmarshal(j.Params, &p) != nil || p.Recovery.Method != "original" || p.PreflightOnly {
			return "", nil
		}
		bs, err := s.cat.ListJobs(ctx, catalog.JobFilter{Kinds: []string{catalog.KindBackup}, States: []string{catalog.JobRunning}, VMName: j.VMName})
		if err != nil {
			return "", err
		}
		rivals = append(rivals, bs...)
		rec, err := s.inPlaceRecovery(ctx, j.VMName, []string{catalog.JobRunning}, j.ID)
		if err != nil {
			return "", err
		}
		if rec.ID != 0 {
			rivals = append(rivals, rec)
		}
	}
	for _, k := range rivals {
		if k.Started.Before(j.Started) || (k.Started.Equal(j.Started) && k.ID < j.ID) {
			what := "an in-place recovery"
			if k.Kind == catalog.KindBackup {
				what = "a backup"
			}
			return fmt.Sprintf("%s of VM %s is running (job %d)", what, j.VMName, k.ID), nil
		}
	}
	return "", nil
}
