package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"lifeboat/recovery"
)

// Instant recovery runs in the foreground: `lifeboat recover --method
// instant` serves the point's disks over NBD (DIR/nbd.sock), defines and
// starts the VM, prints one JSON line ({"instant": {vm, socket, disks
// with their overlays, …}, "control": DIR/control.sock}) and serves until
// signalled. The serving process owns the overlays (they are flocked), so
// finalizing happens inside it: `lifeboat recover --finalize --to DIR`
// connects to DIR/control.sock and asks for it (SIGUSR1 does the same);
// the serving process shuts the guest down, copies the disks into
// DIR/<target>.qcow2, redefines and restarts the VM from them, prints a
// JSON result line, answers the client with the same line, and exits.
// SIGINT or SIGTERM without finalizing power the VM off (it cannot run
// without the server) and keep the overlays for a later run.

// instantControl is the control socket's name in the target folder.
const instantControl = "control.sock"

func runInstant(ctx context.Context, e *env, asJSON, dry bool, rc *recovery.Recovery, req recovery.Request) error {
	p, err := rc.Plan(ctx, req)
	if err != nil {
		if pe, ok := recovery.AsPreflight(err); ok {
			return reportRefusal(e, asJSON, p, pe)
		}
		return err
	}
	if dry {
		if asJSON {
			return json.NewEncoder(e.stdout).Encode(map[string]any{"plan": p})
		}
		printPlan(e, p)
		fmt.Fprintln(e.stdout, "preflight passed (dry run: nothing was changed)")
		return nil
	}
	if !asJSON {
		printPlan(e, p)
	}
	rc.Log = func(msg string) { fmt.Fprintln(e.stderr, msg) }
	in, err := rc.StartInstant(ctx, p)
	if err != nil {
		return err
	}
	defer in.Close()
	ctlPath := filepath.Join(p.Dir, instantControl)
	os.Remove(ctlPath)
	ctl, err := net.Listen("unix", ctlPath)
	if err != nil {
		return fmt.Errorf("instant recovery: control socket: %w", err)
	}
	defer os.Remove(ctlPath)
	defer ctl.Close()
	os.Chmod(ctlPath, 0o600)
	json.NewEncoder(e.stdout).Encode(map[string]any{"instant": in.Info(), "control": ctlPath})

	reqs := make(chan net.Conn)
	go func() {
		for {
			c, err := ctl.Accept()
			if err != nil {
				close(reqs)
				return
			}
			reqs <- c
		}
	}()
	usr1 := make(chan os.Signal, 1)
	notifyFinalize(usr1)
	defer signal.Stop(usr1)
	for {
		var client net.Conn
		select {
		case <-ctx.Done():
			fmt.Fprintln(e.stderr, "signalled: powering the VM off and stopping the NBD server (the overlays are kept)")
			return nil
		case <-usr1:
		case c, ok := <-reqs:
			if !ok {
				return errors.New("instant recovery: control socket closed")
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.SetDeadline(time.Time{})
			switch strings.TrimSpace(line) {
			case "finalize":
				client = c
			case "info":
				json.NewEncoder(c).Encode(map[string]any{"instant": in.Info()})
				c.Close()
				continue
			default:
				json.NewEncoder(c).Encode(map[string]any{"error": "unknown request " + strings.TrimSpace(line)})
				c.Close()
				continue
			}
		}
		res, err := in.Finalize(context.WithoutCancel(ctx))
		out := map[string]any{"finalized": res}
		if err != nil {
			out["error"] = err.Error()
		}
		json.NewEncoder(e.stdout).Encode(out)
		if client != nil {
			json.NewEncoder(client).Encode(out)
			client.Close()
		}
		if err == nil || in.Info().Finalized {
			return err
		}
		// The VM runs from NBD again: keep serving.
	}
}

// finalizeInstant is `lifeboat recover --finalize --to DIR`: it asks the
// process serving DIR to finalize and prints its answer.
func finalizeInstant(ctx context.Context, e *env, dir, vm string) error {
	ctlPath := filepath.Join(dir, instantControl)
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", ctlPath)
	if err != nil {
		return fmt.Errorf("no instant recovery is served from %s (%v): run `lifeboat recover --method instant … --to %s` first", dir, err, dir)
	}
	defer c.Close()
	if vm != "" {
		info, err := askInstant(c, "info")
		if err != nil {
			return err
		}
		c.Close()
		var x struct {
			Instant recovery.InstantInfo `json:"instant"`
		}
		json.Unmarshal(info, &x)
		if x.Instant.VM != vm {
			return fmt.Errorf("%s serves VM %q, not %q", dir, x.Instant.VM, vm)
		}
		if c, err = d.DialContext(ctx, "unix", ctlPath); err != nil {
			return err
		}
		defer c.Close()
	}
	out, err := askInstant(c, "finalize")
	if err != nil {
		return err
	}
	e.stdout.Write(out)
	var x struct {
		Error string `json:"error"`
	}
	json.Unmarshal(out, &x)
	if x.Error != "" {
		return errors.New(x.Error)
	}
	return nil
}

func askInstant(c net.Conn, req string) ([]byte, error) {
	if _, err := fmt.Fprintln(c, req); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("instant recovery: %s: %w", req, err)
	}
	return line, nil
}
