package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/disk"
	"lifeboat/repo"
)

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.cat.Stats(r.Context())
	if err != nil {
		s.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.Status{
		Version: s.cfg.Version, Started: s.started.UTC(), CAFingerprint: s.CAFingerprint(),
		Repository: s.repo.Config(), Catalog: s.cat.Dialect(), Stats: st,
		Limits: api.SchedulerLimits{PerVolume: s.cfg.PerVolume, PerNode: s.cfg.PerNode, MaxRecoveries: s.cfg.MaxRecoveries},
	})
}

// ---- enrollment tokens and agents ------------------------------------------------

func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request) {
	var req api.TokenRequest
	if r.ContentLength != 0 && !decode(w, r, &req) {
		return
	}
	ttl := 24 * time.Hour
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d < time.Minute || d > 30*24*time.Hour {
			fail(w, http.StatusBadRequest, "bad_request", "ttl must be a duration from 1m to 720h")
			return
		}
		ttl = d
	}
	if len(req.Note) > 1024 {
		fail(w, http.StatusBadRequest, "bad_request", "note longer than 1024 bytes")
		return
	}
	var clusterID int64
	if req.Cluster != "" {
		cl, ok := s.clusterRef(w, r, req.Cluster)
		if !ok {
			return
		}
		clusterID = cl.ID
	}
	tok, t, err := s.cat.CreateEnrollmentToken(r.Context(), clusterID, ttl, req.Note)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, api.TokenResponse{Token: tok, ID: t.ID, Expires: t.Expires, CAFingerprint: s.CAFingerprint()})
}

func (s *Server) handleListTokens(w http.ResponseWriter, r *http.Request) {
	ts, err := s.cat.ListEnrollmentTokens(r.Context())
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(ts))
}

// nodeRef finds a node by ID or name.
func (s *Server) nodeRef(w http.ResponseWriter, r *http.Request, ref string) (catalog.Node, bool) {
	var n catalog.Node
	var err error
	if id, perr := strconv.ParseInt(ref, 10, 64); perr == nil && id > 0 {
		n, err = s.cat.GetNode(r.Context(), id)
	} else if err = api.CheckName("node", ref); err != nil {
		fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return n, false
	} else {
		n, err = s.cat.NodeByName(r.Context(), ref)
	}
	if err != nil {
		s.catalogError(w, r, err)
		return n, false
	}
	return n, true
}

func (s *Server) handleListAgents(w http.ResponseWriter, r *http.Request) {
	ns, err := s.cat.ListNodes(r.Context(), 0)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.agentViews(ns))
}

func (s *Server) handleGetAgent(w http.ResponseWriter, r *http.Request) {
	if n, ok := s.nodeRef(w, r, r.PathValue("node")); ok {
		writeJSON(w, http.StatusOK, n)
	}
}

func (s *Server) handleAgentInventory(w http.ResponseWriter, r *http.Request) {
	n, ok := s.nodeRef(w, r, r.PathValue("node"))
	if !ok {
		return
	}
	s.invMu.Lock()
	inv, ok := s.inventory[n.ID]
	s.invMu.Unlock()
	if !ok {
		inv.VMs = []api.InventoryVM{}
	}
	writeJSON(w, http.StatusOK, inv)
}

func (s *Server) handleRevokeAgent(w http.ResponseWriter, r *http.Request) {
	n, ok := s.nodeRef(w, r, r.PathValue("node"))
	if !ok {
		return
	}
	if err := s.cat.RevokeNode(r.Context(), n.ID); err != nil {
		s.catalogError(w, r, err)
		return
	}
	s.forgetNodes()
	s.log.Warn("agent revoked", "node", n.Name)
	n, _ = s.cat.GetNode(r.Context(), n.ID)
	writeJSON(w, http.StatusOK, n)
}

// ---- clusters and shared volumes -------------------------------------------------

func (s *Server) clusterRef(w http.ResponseWriter, r *http.Request, ref string) (catalog.Cluster, bool) {
	var cl catalog.Cluster
	var err error
	if id, perr := strconv.ParseInt(ref, 10, 64); perr == nil && id > 0 {
		cl, err = s.cat.GetCluster(r.Context(), id)
	} else if err = api.CheckName("cluster", ref); err != nil {
		fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return cl, false
	} else {
		cl, err = s.cat.ClusterByName(r.Context(), ref)
	}
	if err != nil {
		s.catalogError(w, r, err)
		return cl, false
	}
	return cl, true
}

func (s *Server) handleListClusters(w http.ResponseWriter, r *http.Request) {
	cs, err := s.cat.ListClusters(r.Context())
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(cs))
}

func (s *Server) handleCreateCluster(w http.ResponseWriter, r *http.Request) {
	var req api.ClusterRequest
	if !decode(w, r, &req) {
		return
	}
	if err := api.CheckName("cluster", req.Name); err != nil {
		fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if req.HAManager != "" && req.HAManager != "pacemaker" {
		fail(w, http.StatusBadRequest, "bad_request", "ha_manager must be empty or \"pacemaker\"")
		return
	}
	cl, err := s.cat.CreateCluster(r.Context(), catalog.Cluster{Name: req.Name, HAManager: req.HAManager})
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, cl)
}

func (s *Server) handleListVolumes(w http.ResponseWriter, r *http.Request) {
	cl, ok := s.clusterRef(w, r, r.PathValue("cluster"))
	if !ok {
		return
	}
	vs, err := s.cat.ListSharedVolumes(r.Context(), cl.ID)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(vs))
}

func (s *Server) handleAddVolume(w http.ResponseWriter, r *http.Request) {
	cl, ok := s.clusterRef(w, r, r.PathValue("cluster"))
	if !ok {
		return
	}
	var req api.VolumeRequest
	if !decode(w, r, &req) {
		return
	}
	if err := api.CheckAbsPath("path", req.Path); err != nil || req.Path == "/" {
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("volume path %q must be an absolute, clean path below /", req.Path))
		return
	}
	if err := api.CheckName("volume", req.VolumeID); err != nil {
		fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	v, err := s.cat.AddSharedVolume(r.Context(), catalog.SharedVolume{ClusterID: cl.ID, Path: req.Path, VolumeID: req.VolumeID})
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, v)
}

func (s *Server) handleListVMs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := catalog.VMFilter{Name: q.Get("name"), VolumeID: q.Get("volume"), Unprotected: q.Get("unprotected") == "true"}
	if f.Name != "" {
		if err := api.CheckVMName(f.Name); err != nil {
			fail(w, http.StatusBadRequest, "bad_request", err.Error())
			return
		}
	}
	vms, err := s.cat.ListVMs(r.Context(), f)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(vms))
}

// ---- groups and the shared-volume rule --------------------------------------------

// ruleError is a request the shared-volume rule (or member resolution)
// refuses: 422.
type ruleError struct{ msg string }

func (e *ruleError) Error() string { return e.msg }

func notAVM(path, why string) error {
	return &ruleError{fmt.Sprintf("only VM data is supported on a cluster shared volume: %s is not a VM (%s)", path, why)}
}

// resolveMember turns a member (a VM name, or the path of a VM's folder
// or image) into a VM name. A path on a shared volume must be a VM: the
// volume's root or any other path is refused with the reason, where DPM
// once showed a checkbox and silently backed up nothing.
func (s *Server) resolveMember(ctx context.Context, m string) (string, error) {
	if !strings.HasPrefix(m, "/") {
		if err := api.CheckVMName(m); err != nil {
			return "", &ruleError{err.Error()}
		}
		return m, nil
	}
	if err := api.CheckAbsPath("path", m); err != nil {
		return "", &ruleError{err.Error()}
	}
	vols, err := s.cat.ListSharedVolumes(ctx, 0)
	if err != nil {
		return "", err
	}
	var vol *catalog.SharedVolume
	for i, v := range vols {
		if (m == v.Path || strings.HasPrefix(m, strings.TrimSuffix(v.Path, "/")+"/")) && (vol == nil || len(v.Path) > len(vol.Path)) {
			vol = &vols[i]
		}
	}
	vms, err := s.cat.ListVMs(ctx, catalog.VMFilter{})
	if err != nil {
		return "", err
	}
	for _, v := range vms {
		if v.Path == m {
			return v.Name, nil
		}
	}
	if vol == nil {
		return "", &ruleError{fmt.Sprintf("no VM is known at %s: protect VMs by name, or by the path of a VM folder or image an agent reported", m)}
	}
	if m == vol.Path {
		return "", notAVM(m, fmt.Sprintf("it is the root of shared volume %s; protect the VMs on it instead", vol.VolumeID))
	}
	for _, v := range vms {
		if v.Path != "" && strings.HasPrefix(m, v.Path+"/") {
			return "", notAVM(m, fmt.Sprintf("it lies inside VM %s; protect the VM itself", v.Name))
		}
	}
	return "", notAVM(m, fmt.Sprintf("no VM is known there on shared volume %s; files other than VMs' are not backed up from a shared volume", vol.VolumeID))
}

func (s *Server) resolveMembers(w http.ResponseWriter, r *http.Request, in []string) ([]string, bool) {
	if len(in) > 10000 {
		fail(w, http.StatusBadRequest, "bad_request", "at most 10000 members per request")
		return nil, false
	}
	out := make([]string, 0, len(in))
	seen := map[string]bool{}
	for _, m := range in {
		name, err := s.resolveMember(r.Context(), m)
		var re *ruleError
		if errors.As(err, &re) {
			code := "bad_member"
			if strings.HasPrefix(re.msg, "only VM data") {
				code = "not_a_vm"
			}
			fail(w, http.StatusUnprocessableEntity, code, re.msg)
			return nil, false
		}
		if err != nil {
			s.catalogError(w, r, err)
			return nil, false
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	return out, true
}

func (s *Server) groupRef(w http.ResponseWriter, r *http.Request, ref string) (catalog.Group, bool) {
	var g catalog.Group
	var err error
	if id, perr := strconv.ParseInt(ref, 10, 64); perr == nil && id > 0 {
		g, err = s.cat.GetGroup(r.Context(), id)
	} else if err = api.CheckName("group", ref); err != nil {
		fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return g, false
	} else {
		g, err = s.cat.GroupByName(r.Context(), ref)
	}
	if err != nil {
		s.catalogError(w, r, err)
		return g, false
	}
	return g, true
}

func (s *Server) handleListGroups(w http.ResponseWriter, r *http.Request) {
	gs, err := s.cat.ListGroups(r.Context())
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	out := make([]api.Group, 0, len(gs))
	for _, g := range gs {
		out = append(out, api.GroupFromCatalog(g))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleGetGroup(w http.ResponseWriter, r *http.Request) {
	if g, ok := s.groupRef(w, r, r.PathValue("group")); ok {
		writeJSON(w, http.StatusOK, api.GroupFromCatalog(g))
	}
}

func (s *Server) handleCreateGroup(w http.ResponseWriter, r *http.Request) {
	var req api.Group
	if !decode(w, r, &req) {
		return
	}
	if req.ID != 0 || !req.Created.IsZero() || !req.Updated.IsZero() {
		fail(w, http.StatusBadRequest, "bad_request", "id, created and updated are set by the server")
		return
	}
	if err := api.CheckName("group", req.Name); err != nil {
		fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	g := catalog.Group{Name: req.Name, FullTimes: req.FullTimes, TimeZone: req.TimeZone,
		RetentionDays: req.RetentionDays, RetentionCount: req.RetentionCount, OfflineFallback: true, VerifyBoot: req.VerifyBoot}
	if req.OfflineFallback != nil {
		g.OfflineFallback = *req.OfflineFallback
	}
	if req.Incremental != "" {
		d, err := time.ParseDuration(req.Incremental)
		if err != nil {
			fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("incremental %q is not a duration", req.Incremental))
			return
		}
		g.Incremental = d
	}
	if g.TimeZone == "" {
		g.TimeZone = "UTC"
	}
	if err := g.Validate(); err != nil {
		fail(w, http.StatusBadRequest, "bad_request", strings.TrimPrefix(err.Error(), "invalid: "))
		return
	}
	members, ok := s.resolveMembers(w, r, req.Members)
	if !ok {
		return
	}
	g.Members = members
	g, err := s.cat.CreateGroup(r.Context(), g)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	s.log.Info("group created", "group", g.Name, "members", len(g.Members))
	s.sched.Poke()
	writeJSON(w, http.StatusCreated, api.GroupFromCatalog(g))
}

func (s *Server) handleAddMembers(w http.ResponseWriter, r *http.Request) {
	g, ok := s.groupRef(w, r, r.PathValue("group"))
	if !ok {
		return
	}
	var req api.Members
	if !decode(w, r, &req) {
		return
	}
	if len(req.Members) == 0 {
		fail(w, http.StatusBadRequest, "bad_request", "members is empty")
		return
	}
	s.addMembers(w, r, g, req.Members)
}

func (s *Server) addMembers(w http.ResponseWriter, r *http.Request, g catalog.Group, in []string) {
	members, ok := s.resolveMembers(w, r, in)
	if !ok {
		return
	}
	if err := s.cat.AddGroupMembers(r.Context(), g.ID, members...); err != nil {
		s.catalogError(w, r, err)
		return
	}
	g, err := s.cat.GetGroup(r.Context(), g.ID)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	s.sched.Poke()
	writeJSON(w, http.StatusOK, api.GroupFromCatalog(g))
}

func (s *Server) handleProtect(w http.ResponseWriter, r *http.Request) {
	var req api.ProtectRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Path == "" || req.Group == "" {
		fail(w, http.StatusBadRequest, "bad_request", "path and group are required")
		return
	}
	g, ok := s.groupRef(w, r, req.Group)
	if !ok {
		return
	}
	s.addMembers(w, r, g, []string{req.Path})
}

func (s *Server) handleRunGroup(w http.ResponseWriter, r *http.Request) {
	g, ok := s.groupRef(w, r, r.PathValue("group"))
	if !ok {
		return
	}
	jobs, err := s.sched.RunGroup(r.Context(), g, "run")
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.RunResponse{Jobs: nonNil(jobs)})
}

// ---- jobs ----------------------------------------------------------------------

func (s *Server) handleListJobs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, ok := queryInt(w, r, "limit", 100, 10000)
	if !ok {
		return
	}
	f := catalog.JobFilter{Limit: limit, VMName: q.Get("vm")}
	for _, st := range q["state"] {
		switch st {
		case catalog.JobQueued, catalog.JobRunning, catalog.JobSucceeded, catalog.JobFailed, catalog.JobCanceled:
			f.States = append(f.States, st)
		default:
			fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("state %q unknown", st))
			return
		}
	}
	for _, k := range q["kind"] {
		switch k {
		case catalog.KindBackup, catalog.KindRecovery, catalog.KindVerify, catalog.KindPrune, catalog.KindGC, catalog.KindTape, catalog.KindVerifyBoot:
			f.Kinds = append(f.Kinds, k)
		default:
			fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("kind %q unknown", k))
			return
		}
	}
	if v := q.Get("group"); v != "" {
		g, ok := s.groupRef(w, r, v)
		if !ok {
			return
		}
		f.GroupID = g.ID
	}
	if v := q.Get("node"); v != "" {
		n, ok := s.nodeRef(w, r, v)
		if !ok {
			return
		}
		f.NodeID = n.ID
	}
	if v := q.Get("before"); v != "" {
		id, err := strconv.ParseInt(v, 10, 64)
		if err != nil || id <= 0 {
			fail(w, http.StatusBadRequest, "bad_request", "before must be a job ID")
			return
		}
		f.BeforeID = id
	}
	js, err := s.cat.ListJobs(r.Context(), f)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(js))
}

func (s *Server) handleGetJob(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "id")
	if !ok {
		return
	}
	j, err := s.cat.GetJob(r.Context(), id)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	log, err := s.cat.JobLog(r.Context(), id, 0, 1000)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.JobDetail{Job: j, Log: nonNil(log)})
}

func (s *Server) handleCancelJob(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "id")
	if !ok {
		return
	}
	j, err := s.cat.CancelJob(r.Context(), id)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	if j.State == catalog.JobCanceled {
		s.metrics.jobDone(j.Kind, j.State, 0)
	}
	s.notify.broadcast()
	writeJSON(w, http.StatusOK, j)
}

// handleCreateJob queues one of the server's own jobs.
func (s *Server) handleCreateJob(w http.ResponseWriter, r *http.Request) {
	var req api.JobRequest
	if !decode(w, r, &req) {
		return
	}
	strict := func(v any) bool {
		if len(req.Params) == 0 {
			return true
		}
		dec := json.NewDecoder(bytes.NewReader(req.Params))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			fail(w, http.StatusBadRequest, "bad_request", "params: "+err.Error())
			return false
		}
		return true
	}
	j := catalog.Job{Kind: req.Kind, Params: req.Params}
	switch req.Kind {
	case catalog.KindVerify:
		var p struct{}
		if !strict(&p) {
			return
		}
	case catalog.KindGC:
		var p api.GCParams
		if !strict(&p) {
			return
		}
		if p.Grace != "" {
			if d, err := time.ParseDuration(p.Grace); err != nil || d < 0 {
				fail(w, http.StatusBadRequest, "bad_request", "grace must be a duration")
				return
			}
		}
	case catalog.KindPrune:
		var p api.PruneParams
		if !strict(&p) {
			return
		}
		switch {
		case p.Group != "":
			g, ok := s.groupRef(w, r, p.Group)
			if !ok {
				return
			}
			j.GroupID = g.ID
		case p.Policy == nil || p.Policy.Empty():
			fail(w, http.StatusBadRequest, "bad_request", "prune needs a group or a policy that keeps something")
			return
		}
	case catalog.KindTape:
		var p api.TapeWriteParams
		if !strict(&p) {
			return
		}
		if err := checkTapeParams(p); err != nil {
			fail(w, http.StatusBadRequest, "bad_request", err.Error())
			return
		}
		pt, err := s.cat.GetPoint(r.Context(), p.Point)
		if err != nil {
			s.catalogError(w, r, err)
			return
		}
		j.VMName = pt.Name
	default:
		fail(w, http.StatusBadRequest, "bad_request", "kind must be verify, prune, gc or tape (backups: POST /api/v1/backups; recoveries: POST /api/v1/recoveries)")
		return
	}
	j, err := s.cat.CreateJob(r.Context(), j)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	s.notify.broadcast()
	writeJSON(w, http.StatusCreated, j)
}

func (s *Server) handleBackupNow(w http.ResponseWriter, r *http.Request) {
	var req api.BackupRequest
	if !decode(w, r, &req) {
		return
	}
	if err := api.CheckVMName(req.VM); err != nil {
		fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	vms, err := s.cat.VMsByName(r.Context(), req.VM)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	if len(vms) == 0 {
		fail(w, http.StatusNotFound, "not_found", fmt.Sprintf("no agent reported a VM named %q", req.VM))
		return
	}
	var groupID int64
	group, noOffline := "", false
	if g, err := s.cat.GroupOfVM(r.Context(), req.VM); err == nil {
		groupID, group, noOffline = g.ID, g.Name, !g.OfflineFallback
	}
	params, _ := json.Marshal(api.BackupParams{FullRead: req.FullRead, Group: group, Reason: "manual", NoOfflineFallback: noOffline})
	var jobs []catalog.Job
	for _, v := range vms {
		jobs = append(jobs, catalog.Job{Kind: catalog.KindBackup, VMID: v.ID, GroupID: groupID, Params: params})
	}
	out, err := s.cat.CreateJobs(r.Context(), jobs)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	s.notify.broadcast()
	writeJSON(w, http.StatusCreated, api.RunResponse{Jobs: out})
}

func (s *Server) handleRestore(w http.ResponseWriter, r *http.Request) {
	var req api.RestoreRequest
	if !decode(w, r, &req) {
		return
	}
	if !repo.ValidPointID(req.Point) {
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("point %q is not a point ID", req.Point))
		return
	}
	if err := api.CheckAbsPath("target", req.Target); err != nil {
		fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if req.Target == "/" {
		fail(w, http.StatusBadRequest, "bad_request", "target must be a folder below /")
		return
	}
	if req.Format != "" {
		if _, err := disk.ParseFormat(req.Format); err != nil {
			fail(w, http.StatusBadRequest, "bad_request", err.Error())
			return
		}
	}
	if req.Node == "" {
		fail(w, http.StatusBadRequest, "bad_request", "node is required: the agent that writes the files")
		return
	}
	n, ok := s.nodeRef(w, r, req.Node)
	if !ok {
		return
	}
	if n.State != catalog.NodeEnrolled {
		fail(w, http.StatusConflict, "conflict", fmt.Sprintf("agent %s is %s", n.Name, n.State))
		return
	}
	p, err := s.cat.GetPoint(r.Context(), req.Point)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	params, _ := json.Marshal(api.RestoreParams{Point: req.Point, Target: req.Target, Format: req.Format, Merge: req.Merge, Overwrite: req.Overwrite})
	j, err := s.cat.CreateJob(r.Context(), catalog.Job{Kind: catalog.KindRecovery, VMName: p.Name, TargetNodeID: n.ID, Params: params})
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	s.notify.broadcast()
	writeJSON(w, http.StatusCreated, j)
}

// ---- points and alerts -----------------------------------------------------------

func (s *Server) handleListPoints(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, ok := queryInt(w, r, "limit", 1000, 100000)
	if !ok {
		return
	}
	f := catalog.PointFilter{Name: q.Get("name"), Group: q.Get("group"), Limit: limit, Files: q.Get("files") == "true"}
	if f.Name != "" {
		if err := api.CheckVMName(f.Name); err != nil {
			fail(w, http.StatusBadRequest, "bad_request", err.Error())
			return
		}
	}
	if f.Group != "" {
		if err := api.CheckName("group", f.Group); err != nil {
			fail(w, http.StatusBadRequest, "bad_request", err.Error())
			return
		}
	}
	pts, err := s.cat.ListPoints(r.Context(), f)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(pts))
}

func (s *Server) handleGetPoint(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !repo.ValidPointID(id) {
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("%q is not a point ID", id))
		return
	}
	p, err := s.cat.GetPoint(r.Context(), id)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	// The repository may hold a newer verdict than the catalog (a CLI
	// verify-boot): syncVerdict records it.
	v, err := s.syncVerdict(r.Context(), id)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	if v != nil {
		p.BootVerdict = v.Verdict
	}
	writeJSON(w, http.StatusOK, api.PointDetail{Point: p, VerifyBoot: v})
}

func (s *Server) handleListAlerts(w http.ResponseWriter, r *http.Request) {
	limit, ok := queryInt(w, r, "limit", 100, 10000)
	if !ok {
		return
	}
	q := r.URL.Query()
	as, err := s.cat.ListAlerts(r.Context(), catalog.AlertFilter{Open: q.Get("open") == "true", Kind: q.Get("kind"), Limit: limit})
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(as))
}

func (s *Server) handleAckAlert(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "id")
	if !ok {
		return
	}
	if err := s.cat.AcknowledgeAlert(r.Context(), id, "admin"); err != nil {
		s.catalogError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
