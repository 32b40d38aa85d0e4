package server

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"lifeboat/api"
)

// handleUpdateGroup is PATCH /groups/{group}: change a group's schedule,
// retention and options, and (members given) its members. The new
// settings are validated whole before anything is written.
func (s *Server) handleUpdateGroup(w http.ResponseWriter, r *http.Request) {
	g, ok := s.groupRef(w, r, r.PathValue("group"))
	if !ok {
		return
	}
	var req api.GroupUpdate
	if !decode(w, r, &req) {
		return
	}
	if req.FullTimes != nil {
		g.FullTimes = *req.FullTimes
	}
	if req.TimeZone != nil {
		g.TimeZone = *req.TimeZone
	}
	if req.Incremental != nil {
		g.Incremental = 0
		if *req.Incremental != "" {
			d, err := time.ParseDuration(*req.Incremental)
			if err != nil {
				fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("incremental %q is not a duration", *req.Incremental))
				return
			}
			g.Incremental = d
		}
	}
	if req.RetentionDays != nil {
		g.RetentionDays = *req.RetentionDays
	}
	if req.RetentionCount != nil {
		g.RetentionCount = *req.RetentionCount
	}
	if req.OfflineFallback != nil {
		g.OfflineFallback = *req.OfflineFallback
	}
	if req.VerifyBoot != nil {
		g.VerifyBoot = *req.VerifyBoot
	}
	if err := g.Validate(); err != nil {
		fail(w, http.StatusBadRequest, "bad_request", strings.TrimPrefix(err.Error(), "invalid: "))
		return
	}
	var add, remove []string
	if req.Members != nil {
		members, ok := s.resolveMembers(w, r, *req.Members)
		if !ok {
			return
		}
		for _, m := range members {
			if !slices.Contains(g.Members, m) {
				add = append(add, m)
			}
		}
		for _, m := range g.Members {
			if !slices.Contains(members, m) {
				remove = append(remove, m)
			}
		}
	}
	if err := s.cat.UpdateGroup(r.Context(), g); err != nil {
		s.catalogError(w, r, err)
		return
	}
	for _, m := range remove {
		if err := s.cat.RemoveGroupMember(r.Context(), g.ID, m); err != nil {
			s.catalogError(w, r, err)
			return
		}
	}
	if len(add) > 0 {
		if err := s.cat.AddGroupMembers(r.Context(), g.ID, add...); err != nil {
			s.catalogError(w, r, err)
			return
		}
	}
	g, err := s.cat.GetGroup(r.Context(), g.ID)
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	s.log.Info("group updated", "group", g.Name, "added", len(add), "removed", len(remove))
	s.sched.Poke()
	writeJSON(w, http.StatusOK, api.GroupFromCatalog(g))
}

// handleRemoveMember is DELETE /groups/{group}/members/{vm}.
func (s *Server) handleRemoveMember(w http.ResponseWriter, r *http.Request) {
	g, ok := s.groupRef(w, r, r.PathValue("group"))
	if !ok {
		return
	}
	vm := r.PathValue("vm")
	if err := api.CheckVMName(vm); err != nil {
		fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if err := s.cat.RemoveGroupMember(r.Context(), g.ID, vm); err != nil {
		s.catalogError(w, r, err)
		return
	}
	s.sched.Poke()
	w.WriteHeader(http.StatusNoContent)
}
