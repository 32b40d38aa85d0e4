package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"

	"lifeboat/agent"
)

// runAgent starts the agent: the metrics listener first (a taken port
// fails before enrollment uses the token), then enrollment, the start-up
// summary, and the agent's loop until ctx ends.
func runAgent(ctx context.Context, e *env, cfg agent.Config, metricsListen string, asJSON bool) error {
	var ln net.Listener
	if metricsListen != "" {
		var err error
		if ln, err = net.Listen("tcp", metricsListen); err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		defer ln.Close()
	}
	a, err := agent.New(ctx, cfg)
	if err != nil {
		return err
	}
	summary := map[string]any{"version": version, "node": a.Name(), "server": a.Server(), "state": cfg.StateDir}
	if ln != nil {
		summary["metrics"] = "http://" + ln.Addr().String() + "/metrics"
	}
	if asJSON {
		json.NewEncoder(e.stdout).Encode(summary)
	} else {
		fmt.Fprintf(e.stdout, "lifeboat agent %s: node %s, server %s, state folder %s\n", version, a.Name(), a.Server(), cfg.StateDir)
		if ln != nil {
			fmt.Fprintf(e.stdout, "metrics on %s\n", summary["metrics"])
		}
	}
	if f, ok := e.stdout.(*os.File); ok {
		f.Sync()
	}
	cfg.Log.Info("agent started", "version", version, "node", a.Name(), "server", a.Server(), "metrics", summary["metrics"])
	served := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	if ln != nil {
		go func() {
			err := a.ServeMetrics(rctx, ln)
			if err != nil {
				cfg.Log.Error("metrics listener", "err", err)
			}
			served <- err
		}()
	} else {
		served <- nil
	}
	err = a.Run(rctx)
	stop()
	if merr := <-served; err == nil {
		err = merr
	}
	return err
}
