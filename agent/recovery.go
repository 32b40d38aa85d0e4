package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"lifeboat/api"
	"lifeboat/hypervisor"
	"lifeboat/recovery"
)

// hostDriver is a Driver that can hand out its hypervisor connection,
// which recovery methods 1 and 2 need (the Folders driver cannot).
type hostDriver interface {
	Conn(ctx context.Context) (hypervisor.Driver, error)
}

// recoveryParams tells a recovery job's params apart from a plain
// restore's: they carry a "recovery" object.
func recoveryParams(raw json.RawMessage) (api.RecoveryParams, bool) {
	var probe struct {
		Recovery json.RawMessage `json:"recovery"`
	}
	if json.Unmarshal(raw, &probe) != nil || len(probe.Recovery) == 0 {
		return api.RecoveryParams{}, false
	}
	var p api.RecoveryParams
	if json.Unmarshal(raw, &p) != nil {
		return api.RecoveryParams{}, false
	}
	return p, true
}

// recover runs one recovery method (package recovery) on this host: the
// preflight always, then, unless the job asks for the preflight only, the
// recovery itself. A refused preflight-only job succeeds: its result is
// the verdict. A refused recovery fails with the refusal's code.
func (a *Agent) recover(ctx context.Context, run *jobRun, p api.RecoveryParams) (any, error) {
	rq := p.Recovery
	m, err := recovery.ParseMethod(rq.Method)
	if err != nil || (m != recovery.MethodOriginal && m != recovery.MethodVM && m != recovery.MethodFolder) {
		return nil, fmt.Errorf("recovery method %q is not run by agents", rq.Method)
	}
	req := recovery.Request{Method: m, Point: rq.Point, TargetHost: a.cfg.Name, Dir: rq.Dir, NewIdentity: rq.NewIdentity,
		Name: rq.Name, HA: rq.HA, HAResource: rq.HAResource, DiscardSavedState: rq.DiscardSavedState, Chain: rq.Chain}
	req.SharedVolumes = append(req.SharedVolumes, p.SharedVolumes...)
	for _, v := range a.cfg.Volumes {
		req.SharedVolumes = append(req.SharedVolumes, v.Path)
	}
	plan := api.RecoveryPlan{Method: rq.Method, Point: rq.Point, Node: a.cfg.Name, Dir: rq.Dir, Checks: []api.RecoveryCheck{}}
	refusal := func(pe *recovery.PreflightError, pl *recovery.Plan) (any, error) {
		if pl != nil {
			plan = planOf(pl, a.cfg.Name)
		}
		plan.Refuse(pe.Code, pe.Message, pe.Advice)
		if p.PreflightOnly {
			run.logf("info", "preflight refused: %s", pe.Error())
			return api.RecoveryResult{Plan: plan}, nil
		}
		return nil, pe
	}
	if rq.Dir != "" {
		if root := a.cfg.RestoreRoot; root != "" {
			root = filepath.Clean(root)
			if d := filepath.Clean(rq.Dir); d != root && !strings.HasPrefix(d, root+"/") {
				plan.Check("target folder", false, fmt.Sprintf("%s is outside this agent's restore root %s", rq.Dir, root))
				return refusal(&recovery.PreflightError{Code: recovery.CodeTargetPath,
					Message: fmt.Sprintf("target %s is outside node %s's restore root %s", rq.Dir, a.cfg.Name, root),
					Advice:  "choose a folder under " + root}, nil)
			}
		}
	}
	if m != recovery.MethodFolder {
		hd, ok := a.cfg.Driver.(hostDriver)
		if !ok {
			return refusal(&recovery.PreflightError{Code: recovery.CodeHostUnreachable,
				Message: fmt.Sprintf("node %s's agent manages VM folders, not a hypervisor (driver %s)", a.cfg.Name, a.cfg.Driver.Name()),
				Advice:  "recover to a folder (method 3), or to a node whose agent runs with a hypervisor (--libvirt)"}, nil)
		}
		if req.Driver, err = hd.Conn(ctx); err != nil {
			return refusal(recovery.HostUnreachable(a.cfg.Name, err), nil)
		}
	}
	r, _, err := a.openRepo(ctx)
	if err != nil {
		return nil, err
	}
	rc := &recovery.Recovery{Repo: r, Progress: run.progress, Log: func(msg string) { run.logf("info", "%s", msg) }}
	if a.cfg.HA != nil {
		rc.HA = a.cfg.HA
	}
	pl, err := rc.Plan(ctx, req)
	if err != nil {
		if pe, ok := recovery.AsPreflight(err); ok {
			return refusal(pe, pl)
		}
		return nil, err
	}
	plan = planOf(pl, a.cfg.Name)
	plan.OK = true
	if p.PreflightOnly {
		run.logf("info", "preflight passed: %s of point %s to node %s", rq.Method, rq.Point, a.cfg.Name)
		return api.RecoveryResult{Plan: plan}, nil
	}
	for _, n := range pl.Notes {
		run.logf("info", "%s", n)
	}
	start := time.Now()
	res, err := rc.Execute(ctx, pl)
	if err != nil {
		var pe *recovery.PreflightError
		if errors.As(err, &pe) {
			return nil, pe
		}
		return nil, err
	}
	return api.RecoveryResult{Plan: plan, VM: res.VM, Files: res.Files, Bytes: res.Bytes, Running: res.Running, HA: res.HA,
		Seconds: time.Since(start).Seconds()}, nil
}

// planOf turns a checked plan into its API form.
func planOf(pl *recovery.Plan, node string) api.RecoveryPlan {
	out := api.RecoveryPlan{Method: string(pl.Method), Point: pl.PointID, Node: node, VM: pl.VM, Dir: pl.Dir, Notes: pl.Notes,
		Checks: make([]api.RecoveryCheck, 0, len(pl.Checks))}
	for _, c := range pl.Checks {
		out.Checks = append(out.Checks, api.RecoveryCheck{Name: c.Name, OK: c.OK, Detail: c.Detail})
	}
	for _, d := range pl.Disks {
		out.Disks = append(out.Disks, api.RecoveryDisk{File: d.File, Path: d.Path, Format: string(d.Format), Merged: d.Merged, Bytes: d.Bytes})
	}
	return out
}
