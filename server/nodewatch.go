package server

import (
	"context"
	"fmt"
	"time"

	"lifeboat/catalog"
)

// An agent that sends no heartbeat for silentAfter heartbeat intervals is
// unreachable: its node runs nothing (it claims no job) until it returns.
const silentAfter = 3

// agentView is an agent as GET /agents shows it: the catalog's node, and
// whether its agent is heard from.
type agentView struct {
	catalog.Node
	// Reachable: the agent sent a heartbeat within silentAfter intervals.
	// A node whose agent never sent one is not reachable either.
	Reachable bool `json:"reachable"`
}

// silence is how long the node's agent has not been heard from beyond the
// allowed silence, 0 when it is reachable.
func (s *Server) silence(n catalog.Node, now time.Time) time.Duration {
	limit := silentAfter * s.cfg.HeartbeatInterval
	if n.LastHeartbeat.IsZero() {
		return limit
	}
	if d := now.Sub(n.LastHeartbeat); d > limit {
		return d
	}
	return 0
}

func (s *Server) agentViews(ns []catalog.Node) []agentView {
	now := time.Now()
	out := make([]agentView, 0, len(ns))
	for _, n := range ns {
		out = append(out, agentView{Node: n, Reachable: n.State == catalog.NodeEnrolled && s.silence(n, now) == 0})
	}
	return out
}

// watchNodes raises a node-unreachable alert when an enrolled agent that
// was heard from falls silent (its node then claims no job: jobs of its
// VMs wait), and, when the agent is heard from again, logs it and
// acknowledges the alert. It checks every heartbeat interval.
func (s *Server) watchNodes(ctx context.Context) {
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	down := map[int64]int64{} // node ID → alert ID
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ns, err := s.cat.ListNodes(ctx, 0)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("watch nodes: list nodes", "err", err)
			}
			continue
		}
		now := time.Now()
		for _, n := range ns {
			alert, wasDown := down[n.ID]
			if n.State != catalog.NodeEnrolled || n.LastHeartbeat.IsZero() {
				delete(down, n.ID) // revoked, or never started: not "lost"
				continue
			}
			silent := s.silence(n, now)
			switch {
			case silent > 0 && !wasDown:
				msg := fmt.Sprintf("the agent of node %s has sent no heartbeat for %s (last %s): the node is unreachable and runs nothing until its agent returns",
					n.Name, silent.Round(100*time.Millisecond), n.LastHeartbeat.UTC().Format(time.RFC3339))
				s.log.Warn("node unreachable", "node", n.Name, "silent", silent.String())
				a, err := s.cat.RaiseAlert(ctx, catalog.Alert{Kind: "node-unreachable", Severity: catalog.SeverityCritical,
					Subject: "node:" + n.Name, Message: msg})
				if err != nil {
					s.log.Error("raise alert", "err", err)
				}
				down[n.ID] = a.ID
			case silent == 0 && wasDown:
				delete(down, n.ID)
				s.log.Info("node reachable again", "node", n.Name)
				if alert != 0 {
					if err := s.cat.AcknowledgeAlert(ctx, alert, "server (agent returned)"); err != nil {
						s.log.Error("acknowledge alert", "alert", alert, "err", err)
					}
				}
			}
		}
	}
}
