package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/recovery"
	"lifeboat/repo"
)

// Verify-boot through the server. A verify-boot job is pinned to a node
// whose agent has a hypervisor; the agent boots the point there
// (recovery.VerifyBoot), stores the verdict in the repository
// (verify/<point>/<run>) and reports its key. The server reads that object
// from its own repository before it records the verdict in the catalog,
// as it loads a reported point before listing it, and fails the job when
// the point did not pass, so the alert and the job list say so.

// maxVerifyTimeout bounds a job's wait for the guest agent.
const maxVerifyTimeout = 3600

// handleVerifyBoot is POST /points/{id}/verify-boot: queue a verify-boot
// of the point on the node (default: the node the point was taken on).
func (s *Server) handleVerifyBoot(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !repo.ValidPointID(id) {
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("%q is not a point ID", id))
		return
	}
	var req api.VerifyBootRequest
	if !decode(w, r, &req) {
		return
	}
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > maxVerifyTimeout {
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("timeout_seconds must be 0 (60 s) to %d", maxVerifyTimeout))
		return
	}
	if len(req.Check) > 4096 || strings.ContainsRune(req.Check, 0) {
		fail(w, http.StatusBadRequest, "bad_request", "check must be at most 4096 bytes without NUL")
		return
	}
	pt, err := s.cat.GetPoint(r.Context(), id)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	var n catalog.Node
	if req.Node != "" {
		var ok bool
		if n, ok = s.nodeRef(w, r, req.Node); !ok {
			return
		}
	} else {
		if pt.Host != "" {
			n, err = s.cat.NodeByName(r.Context(), pt.Host)
		}
		if pt.Host == "" || errors.Is(err, catalog.ErrNotFound) {
			fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("point %s was taken on %q, which has no agent: give node, one whose agent runs with a hypervisor", id, pt.Host))
			return
		}
		if err != nil {
			s.catalogError(w, r, err)
			return
		}
	}
	if bad := s.nodeUnready(n); bad != "" {
		fail(w, http.StatusConflict, codeHostUnreachable, bad+": verify-boot on a node whose agent is enrolled and sends heartbeats")
		return
	}
	j, err := s.queueVerifyBoot(r.Context(), n, pt.Name, 0, api.VerifyBootParams{Point: id, Check: req.Check, TimeoutSeconds: req.TimeoutSeconds, Reason: "manual"})
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	s.log.Info("verify-boot queued", "point", id, "node", n.Name, "job", j.ID)
	writeJSON(w, http.StatusCreated, j)
}

// queueVerifyBoot queues a verify-boot job pinned to node n.
func (s *Server) queueVerifyBoot(ctx context.Context, n catalog.Node, vm string, groupID int64, p api.VerifyBootParams) (catalog.Job, error) {
	raw, err := json.Marshal(p)
	if err != nil {
		return catalog.Job{}, err
	}
	j, err := s.cat.CreateJob(ctx, catalog.Job{Kind: catalog.KindVerifyBoot, VMName: vm, TargetNodeID: n.ID, GroupID: groupID, Params: raw})
	if err != nil {
		return j, err
	}
	s.notify.broadcast()
	return j, nil
}

// verifyGroupPoint queues the verify-boot a group with VerifyBoot asks
// for after each recorded backup: on the node that took the point, whose
// agent just showed it reaches the hypervisor. A failure to queue is
// logged; the backup stands.
func (s *Server) verifyGroupPoint(ctx context.Context, g catalog.Group, j catalog.Job, p *repo.Point) {
	if !g.VerifyBoot || j.NodeID == 0 {
		return
	}
	n, err := s.cat.GetNode(ctx, j.NodeID)
	if err == nil {
		var vj catalog.Job
		vj, err = s.queueVerifyBoot(ctx, n, p.Name, g.ID, api.VerifyBootParams{Point: p.ID, Reason: "group"})
		if err == nil {
			s.log.Info("verify-boot queued", "point", p.ID, "group", g.Name, "node", n.Name, "job", vj.ID)
			return
		}
	}
	s.log.Error("queue the group's verify-boot", "point", p.ID, "group", g.Name, "err", err)
}

// recordVerdict records the verdict a verify-boot job reports, after
// reading it from the repository. It returns the verdict.
func (s *Server) recordVerdict(ctx context.Context, j catalog.Job, result json.RawMessage) (*recovery.BootVerdict, error) {
	var p api.VerifyBootParams
	if err := json.Unmarshal(j.Params, &p); err != nil {
		return nil, fmt.Errorf("job params: %w", err)
	}
	var res api.VerifyBootResult
	if err := json.Unmarshal(result, &res); err != nil || res.Verdict.Key == "" {
		return nil, fmt.Errorf("the agent reported a verify-boot without a verdict")
	}
	if !strings.HasPrefix(res.Verdict.Key, "verify/"+p.Point+"/") {
		return nil, fmt.Errorf("the agent reported verdict %s for a verify-boot of point %s", res.Verdict.Key, p.Point)
	}
	v, err := s.loadVerdict(ctx, res.Verdict.Key)
	if err != nil {
		return nil, fmt.Errorf("the agent reported verdict %s, which the repository cannot load: %v", res.Verdict.Key, err)
	}
	if v.Point != p.Point {
		return nil, fmt.Errorf("verdict %s is about point %s, not %s", v.Key, v.Point, p.Point)
	}
	if err := s.cat.RecordBootVerdict(ctx, verdictRow(v)); err != nil {
		return nil, err
	}
	s.log.Info("boot verdict recorded", "point", v.Point, "verdict", v.Verdict, "host", v.Host, "job", j.ID)
	return v, nil
}

func (s *Server) loadVerdict(ctx context.Context, key string) (*recovery.BootVerdict, error) {
	b, err := s.repo.LoadVerdict(ctx, key)
	if err != nil {
		return nil, err
	}
	v, err := recovery.DecodeBootVerdict(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	v.Key = key
	return v, nil
}

// verdictRow is the catalog's summary of a verdict.
func verdictRow(v *recovery.BootVerdict) catalog.BootVerdict {
	return catalog.BootVerdict{PointID: v.Point, Verdict: v.Verdict, Reason: v.Reason, Host: v.Host, CheckedAt: v.Time,
		BootSeconds: v.BootSeconds, Seconds: v.Seconds, Key: v.Key}
}

// syncVerdict brings the catalog up to the newest verdict the repository
// holds for a point (one written by `lifeboat verify-boot` directly, or
// before an adoption) and returns it in full, or nil when the point was
// never verified. The catalog's own summary is returned, with Error set,
// when the repository's record cannot be read.
func (s *Server) syncVerdict(ctx context.Context, pointID string) (*api.BootVerdict, error) {
	keys, err := s.repo.VerdictKeys(ctx, pointID)
	if err != nil {
		return nil, err
	}
	cv, err := s.cat.GetBootVerdict(ctx, pointID)
	known := err == nil
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return nil, err
	}
	var v *recovery.BootVerdict
	// Keys sort by the run's time: the last is the newest.
	if n := len(keys); n > 0 && (!known || keys[n-1] > cv.Key) {
		if v, err = s.loadVerdict(ctx, keys[n-1]); err != nil {
			s.log.Warn("boot verdict does not load", "point", pointID, "key", keys[n-1], "err", err)
			v = nil
		} else if err := s.cat.RecordBootVerdict(ctx, verdictRow(v)); err != nil {
			return nil, err
		} else {
			cv, known = verdictRow(v), true
		}
	}
	if !known {
		return nil, nil
	}
	out := &api.BootVerdict{BootVerdict: cv}
	if v == nil && cv.Key != "" {
		if v, err = s.loadVerdict(ctx, cv.Key); err != nil {
			out.Error = err.Error()
			return out, nil
		}
	}
	if v != nil {
		out.VM, out.Throwaway, out.SerialLog, out.SerialLogBytes, out.Notes = v.VM, v.Throwaway, v.SerialLog, v.SerialLogBytes, v.Notes
		if v.Check != nil {
			out.Check, _ = json.Marshal(v.Check)
		}
	}
	return out, nil
}

// adoptVerdicts records, for each adopted point, the newest verdict the
// repository holds. A verdict that does not load is logged and skipped.
func (s *Server) adoptVerdicts(ctx context.Context, points []repo.Point) int {
	n := 0
	for _, p := range points {
		v, err := s.syncVerdict(ctx, p.ID)
		if err != nil {
			s.log.Warn("adopt: boot verdict", "point", p.ID, "err", err)
			continue
		}
		if v != nil {
			n++
		}
	}
	return n
}
