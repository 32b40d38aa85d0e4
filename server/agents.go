package server

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
)

// handleEnroll spends a one-time token, signs the agent's CSR and records
// the node. A replayed, unknown or expired token is refused (403).
func (s *Server) handleEnroll(w http.ResponseWriter, r *http.Request) {
	var req api.EnrollRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Token == "" || req.CSR == "" {
		fail(w, http.StatusBadRequest, "bad_request", "token and csr are required")
		return
	}
	if err := api.CheckName("node", req.Name); err != nil {
		fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if len(req.Hostname) > 255 || strings.ContainsAny(req.Hostname, "\x00/\\") {
		fail(w, http.StatusBadRequest, "bad_request", "hostname is not valid")
		return
	}
	der, err := s.pki.signAgent(req.CSR, req.Name)
	if err != nil {
		fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	fp := api.Fingerprint(der)
	n, err := s.cat.EnrollNode(r.Context(), req.Token, catalog.Node{Name: req.Name, Hostname: req.Hostname, CertFingerprint: fp})
	switch {
	case errors.Is(err, catalog.ErrConflict) && strings.Contains(err.Error(), "already used"):
		s.log.Warn("enrollment refused: token replayed", "node", req.Name, "remote", r.RemoteAddr)
		fail(w, http.StatusForbidden, "token_used", "this enrollment token was already used")
		return
	case errors.Is(err, catalog.ErrNotFound) && strings.Contains(err.Error(), "unknown token"):
		s.log.Warn("enrollment refused: unknown token", "node", req.Name, "remote", r.RemoteAddr)
		fail(w, http.StatusForbidden, "token_unknown", "unknown enrollment token")
		return
	case errors.Is(err, catalog.ErrExpired):
		fail(w, http.StatusForbidden, "token_expired", "this enrollment token has expired")
		return
	case err != nil:
		s.catalogError(w, r, err)
		return
	}
	s.forgetNodes()
	s.log.Info("agent enrolled", "node", n.Name, "id", n.ID, "hostname", n.Hostname, "fingerprint", fp)
	writeJSON(w, http.StatusOK, api.EnrollResponse{
		Node:        n,
		Certificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		CA:          string(s.pki.caPEM),
	})
}

func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request) {
	var hb api.Heartbeat
	if !decode(w, r, &hb) {
		return
	}
	if len(hb.Version) > 64 || len(hb.Hostname) > 255 || len(hb.Driver) > 64 {
		fail(w, http.StatusBadRequest, "bad_request", "field too long")
		return
	}
	n := nodeOf(r)
	if err := s.cat.Heartbeat(r.Context(), n.ID, hb.Version); err != nil {
		s.catalogError(w, r, err)
		return
	}
	s.metrics.heartbeats.Add(1)
	resp := api.HeartbeatResponse{Node: n, Volumes: []catalog.SharedVolume{}, Interval: s.cfg.HeartbeatInterval.String()}
	if n.ClusterID != 0 {
		vols, err := s.cat.ListSharedVolumes(r.Context(), n.ClusterID)
		if err != nil {
			s.catalogError(w, r, err)
			return
		}
		if vols != nil {
			resp.Volumes = vols
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleInventory(w http.ResponseWriter, r *http.Request) {
	var inv api.Inventory
	if !decode(w, r, &inv) {
		return
	}
	n := nodeOf(r)
	reports := make([]catalog.VMReport, 0, len(inv.VMs))
	seen := map[string]bool{}
	for i, v := range inv.VMs {
		if v.UUID == "" || len(v.UUID) > 128 || seen[v.UUID] {
			fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("vms[%d]: missing or repeated uuid", i))
			return
		}
		seen[v.UUID] = true
		if err := api.CheckVMName(v.Name); err != nil {
			fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("vms[%d]: %v", i, err))
			return
		}
		if v.Path != "" {
			if err := api.CheckAbsPath("path", v.Path); err != nil {
				fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("vms[%d]: %v", i, err))
				return
			}
		}
		switch v.State {
		case catalog.VMRunning, catalog.VMOff, catalog.VMSaved, catalog.VMPaused, catalog.VMMigrating, catalog.VMUnknown, "":
		default:
			fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("vms[%d]: state %q unknown", i, v.State))
			return
		}
		if len(v.VolumeID) > 256 {
			fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("vms[%d]: volume_id too long", i))
			return
		}
		reports = append(reports, catalog.VMReport{UUID: v.UUID, Name: v.Name, VolumeID: v.VolumeID, Path: v.Path, State: v.State})
	}
	if err := s.cat.ReportInventory(r.Context(), n.ID, reports); err != nil {
		s.catalogError(w, r, err)
		return
	}
	s.invMu.Lock()
	s.inventory[n.ID] = inventoryEntry{Time: time.Now().UTC(), VMs: inv.VMs}
	s.invMu.Unlock()
	s.notify.broadcast()
	w.WriteHeader(http.StatusNoContent)
}

// limits are the claim limits in force.
func (s *Server) limits() catalog.Limits {
	lim := catalog.Limits{PerKind: map[string]int{}}
	if s.cfg.PerVolume > 0 {
		lim.PerVolume = s.cfg.PerVolume
	}
	if s.cfg.PerNode > 0 {
		lim.PerNode = s.cfg.PerNode
	}
	if s.cfg.MaxRecoveries > 0 {
		lim.PerKind[catalog.KindRecovery] = s.cfg.MaxRecoveries
	}
	if s.cfg.MaxVerifyBoots > 0 {
		lim.PerKind[catalog.KindVerifyBoot] = s.cfg.MaxVerifyBoots
	}
	return lim
}

// handleNextJob long-polls: it claims the next job the agent may run
// within the limits, waiting up to ?wait= (default 30s, at most 120s).
func (s *Server) handleNextJob(w http.ResponseWriter, r *http.Request) {
	wait := 30 * time.Second
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > 120*time.Second {
			fail(w, http.StatusBadRequest, "bad_request", "wait must be a duration from 0s to 120s")
			return
		}
		wait = d
	}
	n := nodeOf(r)
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for first := true; ; first = false {
		ch := s.notify.wait()
		if !first { // a node revoked while it waits is told at once
			cur, err := s.cat.GetNode(r.Context(), n.ID)
			if err != nil || cur.State != catalog.NodeEnrolled {
				fail(w, http.StatusForbidden, "revoked", fmt.Sprintf("agent %s is no longer enrolled", n.Name))
				return
			}
		}
		j, err := s.cat.ClaimNext(r.Context(), n.ID, s.limits())
		if err == nil {
			if deferred, err := s.deferConflict(r.Context(), j); err != nil {
				s.catalogError(w, r, err)
				return
			} else if deferred {
				continue
			}
			s.log.Info("job claimed", "job", j.ID, "kind", j.Kind, "vm", j.VMName, "node", n.Name, "volume", j.VolumeID)
			writeJSON(w, http.StatusOK, j)
			return
		}
		if !errors.Is(err, catalog.ErrNotFound) {
			s.catalogError(w, r, err)
			return
		}
		select {
		case <-ch:
		case <-time.After(time.Second): // deferred jobs come due without a broadcast
		case <-deadline.C:
			w.WriteHeader(http.StatusNoContent)
			return
		case <-r.Context().Done(): // the agent left, or the server stops
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
}

// deferConflict puts a job just claimed back in the queue when it would
// collide with a running job on the same VM (claimConflict), to be tried
// again after three heartbeat intervals.
func (s *Server) deferConflict(ctx context.Context, j catalog.Job) (bool, error) {
	why, err := s.claimConflict(ctx, j)
	if err != nil || why == "" {
		return false, err
	}
	retry := 3 * s.cfg.HeartbeatInterval
	if err := s.cat.DeferJob(ctx, j.ID, time.Now().Add(retry), why); err != nil {
		return false, err
	}
	s.log.Info("job deferred: its VM is busy", "job", j.ID, "kind", j.Kind, "vm", j.VMName, "reason", why)
	return true, nil
}

// agentJob loads a job the calling agent runs; on failure it answered.
func (s *Server) agentJob(w http.ResponseWriter, r *http.Request) (catalog.Job, bool) {
	id, ok := pathID(w, r, "id")
	if !ok {
		return catalog.Job{}, false
	}
	j, err := s.cat.GetJob(r.Context(), id)
	if err != nil {
		s.catalogError(w, r, err)
		return j, false
	}
	if j.NodeID != nodeOf(r).ID {
		fail(w, http.StatusForbidden, "forbidden", fmt.Sprintf("job %d is not running on this agent", id))
		return j, false
	}
	return j, true
}

func (s *Server) handleProgress(w http.ResponseWriter, r *http.Request) {
	j, ok := s.agentJob(w, r)
	if !ok {
		return
	}
	var p api.Progress
	if !decode(w, r, &p) {
		return
	}
	if p.Progress < 0 || p.Progress > 1 || p.Bytes < 0 {
		fail(w, http.StatusBadRequest, "bad_request", "progress must be 0..1 and bytes not negative")
		return
	}
	cancel, err := s.cat.SetJobProgress(r.Context(), j.ID, p.Progress, p.Bytes)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.ProgressResponse{Cancel: cancel})
}

func (s *Server) handleLog(w http.ResponseWriter, r *http.Request) {
	j, ok := s.agentJob(w, r)
	if !ok {
		return
	}
	var l api.LogLines
	if !decode(w, r, &l) {
		return
	}
	switch l.Level {
	case "", "debug", "info", "warn", "error":
	default:
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("level %q unknown", l.Level))
		return
	}
	if len(l.Lines) == 0 || len(l.Lines) > 1000 {
		fail(w, http.StatusBadRequest, "bad_request", "1 to 1000 lines per call")
		return
	}
	for i, line := range l.Lines {
		if len(line) > 8192 {
			l.Lines[i] = line[:8192] + "…"
		}
	}
	if err := s.cat.AddJobLog(r.Context(), j.ID, l.Level, l.Lines...); err != nil {
		s.catalogError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleDefer(w http.ResponseWriter, r *http.Request) {
	j, ok := s.agentJob(w, r)
	if !ok {
		return
	}
	var d api.Defer
	if !decode(w, r, &d) {
		return
	}
	if d.Seconds < 0 || d.Seconds > 3600 || len(d.Reason) > 4096 {
		fail(w, http.StatusBadRequest, "bad_request", "seconds must be 0..3600 and the reason short")
		return
	}
	if d.Seconds == 0 {
		d.Seconds = 30
	}
	if err := s.cat.DeferJob(r.Context(), j.ID, time.Now().Add(time.Duration(d.Seconds)*time.Second), d.Reason); err != nil {
		s.catalogError(w, r, err)
		return
	}
	s.log.Info("job deferred", "job", j.ID, "vm", j.VMName, "node", nodeOf(r).Name, "reason", d.Reason)
	s.notify.broadcast()
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleFinish(w http.ResponseWriter, r *http.Request) {
	j, ok := s.agentJob(w, r)
	if !ok {
		return
	}
	var f api.Finish
	if !decode(w, r, &f) {
		return
	}
	switch f.State {
	case catalog.JobSucceeded, catalog.JobFailed, catalog.JobCanceled:
	default:
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("state %q: want succeeded, failed or canceled", f.State))
		return
	}
	if len(f.Error) > 64<<10 {
		f.Error = f.Error[:64<<10]
	}
	if len(f.Result) > 0 && !json.Valid(f.Result) {
		fail(w, http.StatusBadRequest, "bad_request", "result is not valid JSON")
		return
	}
	if j.State != catalog.JobRunning {
		fail(w, http.StatusConflict, "conflict", fmt.Sprintf("job %d is %s", j.ID, j.State))
		return
	}
	if f.State == catalog.JobSucceeded && j.Kind == catalog.KindBackup {
		if err := s.recordBackup(r.Context(), j, f.Result); err != nil {
			f.State, f.Error = catalog.JobFailed, err.Error()
		}
	}
	if f.State == catalog.JobSucceeded && j.Kind == catalog.KindVerifyBoot {
		// A point that does not boot fails its job (and so alerts); the
		// result keeps the verdict either way.
		if v, err := s.recordVerdict(r.Context(), j, f.Result); err != nil {
			f.State, f.Error = catalog.JobFailed, err.Error()
		} else if !v.OK() {
			f.State, f.Error = catalog.JobFailed, fmt.Sprintf("point %s of %s on %s: %s: %s", v.Point, v.VM, v.Host, v.Verdict, v.Reason)
		}
	}
	if err := s.cat.FinishJob(r.Context(), j.ID, f.State, f.Result, f.Error); err != nil {
		s.catalogError(w, r, err)
		return
	}
	s.jobFinished(r.Context(), j, f.State, f.Error)
	w.WriteHeader(http.StatusNoContent)
}

// recordBackup lists the point an agent says it wrote, after checking
// the repository holds it, and queues the group's retention.
func (s *Server) recordBackup(ctx context.Context, j catalog.Job, result json.RawMessage) error {
	var res api.BackupResult
	if err := json.Unmarshal(result, &res); err != nil || res.Point == "" {
		return fmt.Errorf("the agent reported success without a point")
	}
	p, err := s.repo.LoadPoint(ctx, res.Point)
	if err != nil {
		return fmt.Errorf("the agent reported point %s, which the repository cannot load: %v", res.Point, err)
	}
	if p.Name != j.VMName {
		return fmt.Errorf("the agent reported point %s of %q for a backup of %q", p.ID, p.Name, j.VMName)
	}
	group := ""
	var g catalog.Group
	if j.GroupID != 0 {
		if g, err = s.cat.GetGroup(ctx, j.GroupID); err == nil {
			group = g.Name
		}
	}
	if err := s.cat.RecordPoint(ctx, catalog.PointFromRepo(p, group)); err != nil {
		return err
	}
	s.metrics.backupDone(p)
	s.log.Info("point recorded", "point", p.ID, "vm", p.Name, "group", group, "job", j.ID)
	if group != "" && (g.RetentionCount > 0 || g.RetentionDays > 0) {
		s.queuePrune(ctx, g)
	}
	if group != "" {
		s.verifyGroupPoint(ctx, g, j, p)
	}
	return nil
}

// jobFinished counts, alerts and wakes waiters.
func (s *Server) jobFinished(ctx context.Context, j catalog.Job, state, errText string) {
	var d time.Duration
	if !j.Started.IsZero() {
		d = time.Since(j.Started)
	}
	s.metrics.jobDone(j.Kind, state, d)
	s.log.Info("job finished", "job", j.ID, "kind", j.Kind, "vm", j.VMName, "state", state, "err", errText)
	if state == catalog.JobFailed {
		subject := fmt.Sprintf("job:%d", j.ID)
		if j.VMName != "" {
			subject = "vm:" + j.VMName
		}
		sev := catalog.SeverityWarning
		if j.Kind == catalog.KindRecovery || j.Kind == catalog.KindVerify || j.Kind == catalog.KindVerifyBoot {
			sev = catalog.SeverityCritical
		}
		if _, err := s.cat.RaiseAlert(ctx, catalog.Alert{Kind: j.Kind + "-failed", Severity: sev, Subject: subject,
			Message: fmt.Sprintf("%s job %d failed: %s", j.Kind, j.ID, errText)}); err != nil {
			s.log.Error("raise alert", "err", err)
		}
	}
	s.notify.broadcast()
}
