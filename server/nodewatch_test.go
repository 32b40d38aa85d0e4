package server_test

import (
	"context"
	"testing"
	"time"

	"lifeboat/agent"
	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/server"
)

// An agent that falls silent makes its node unreachable: GET /agents says
// so and a critical node-unreachable alert is raised; when the agent
// returns the node is reachable again and the alert acknowledged.
func TestNodeUnreachable(t *testing.T) {
	e := start(t, server.Config{HeartbeatInterval: 200 * time.Millisecond})
	ctx := context.Background()
	cfg := agent.Config{Server: e.url, Token: e.token(""), StateDir: t.TempDir(), Name: "n1", CAFingerprint: e.srv.CAFingerprint(),
		Interval: 100 * time.Millisecond, Wait: time.Second, Log: quietLog(t)}
	run := func() func() {
		a, err := agent.New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		actx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { a.Run(actx); close(done) }()
		return func() { cancel(); <-done }
	}
	reachable := func() (bool, bool) {
		var as []struct {
			catalog.Node
			Reachable bool `json:"reachable"`
		}
		if err := e.do("GET", api.Prefix+"/agents", nil, &as); err != nil {
			t.Fatal(err)
		}
		if len(as) != 1 {
			return false, false
		}
		return as[0].Reachable, !as[0].LastHeartbeat.IsZero()
	}
	alerts := func() []catalog.Alert {
		var as []catalog.Alert
		if err := e.do("GET", api.Prefix+"/alerts?kind=node-unreachable", nil, &as); err != nil {
			t.Fatal(err)
		}
		return as
	}

	stop := run()
	waitFor(t, "a reachable agent", func() bool { r, _ := reachable(); return r })
	if len(alerts()) != 0 {
		t.Fatalf("alerts while the agent runs: %+v", alerts())
	}
	stop()
	waitFor(t, "the node unreachable", func() bool { r, heard := reachable(); return !r && heard })
	waitFor(t, "a node-unreachable alert", func() bool { return len(alerts()) == 1 })
	if a := alerts()[0]; a.Subject != "node:n1" || a.Severity != catalog.SeverityCritical || !a.Acknowledged.IsZero() {
		t.Errorf("alert: %+v", a)
	}

	stop = run()
	defer stop()
	waitFor(t, "the node reachable again", func() bool { r, _ := reachable(); return r })
	waitFor(t, "the alert acknowledged", func() bool { as := alerts(); return len(as) == 1 && !as[0].Acknowledged.IsZero() })
}
