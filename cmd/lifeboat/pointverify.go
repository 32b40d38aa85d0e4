package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"strings"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
)

// cmdPointVerifyBoot is `lifeboat point verify-boot ID`: a verify-boot job
// run by a node's agent through the server (`lifeboat verify-boot` does
// the same on a host without a server). With --wait it follows the job
// and prints the verdict; it fails unless the point booted and its agent
// answered.
func cmdPointVerifyBoot(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("point verify-boot", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	var req api.VerifyBootRequest
	fs.StringVar(&req.Node, "node", "", "the node whose hypervisor boots the point (default: the node the point was taken on)")
	fs.StringVar(&req.Check, "check", "", "shell command run in the guest through its agent; a non-zero exit fails the point")
	timeout := fs.Duration("timeout", 0, "how long the guest agent may take to answer (default 60s)")
	wait := fs.Bool("wait", false, "wait for the verdict")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("usage: lifeboat point verify-boot ID [--node NODE] [--check CMD] [--timeout 60s] [--wait]")
	}
	if *timeout < 0 || *timeout%time.Second != 0 {
		return usagef("--timeout %s: want whole seconds", *timeout)
	}
	req.TimeoutSeconds = int(*timeout / time.Second)
	id := pos[0]
	var j catalog.Job
	if err := cf.quiet(ctx, e, http.MethodPost, api.Prefix+"/points/"+api.Q(id)+"/verify-boot", req, &j); err != nil {
		return err
	}
	if !*wait {
		if cf.json {
			return writeJSONOut(e, map[string]any{"job": j})
		}
		fmt.Fprintf(e.stdout, "queued verify-boot job %d of point %s\n", j.ID, id)
		return nil
	}
	d, err := waitJobAPI(ctx, e, &cf, j.ID, "verify-boot "+id)
	if err != nil {
		return err
	}
	var p api.PointDetail
	if err := cf.quiet(ctx, e, http.MethodGet, api.Prefix+"/points/"+api.Q(id), nil, &p); err != nil {
		return err
	}
	if cf.json {
		writeJSONOut(e, map[string]any{"job": d, "verify_boot": p.VerifyBoot})
	} else if p.VerifyBoot != nil && d.State != catalog.JobCanceled {
		printAPIVerdict(e, p.VerifyBoot, d.State != catalog.JobSucceeded)
	}
	if d.State != catalog.JobSucceeded {
		return fmt.Errorf("verify-boot job %d %s: %s", d.ID, d.State, d.Error)
	}
	return nil
}

// cmdPointShow is `lifeboat point show ID`: a point from the catalog with
// its files, notes and newest boot verdict.
func cmdPointShow(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("point show", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	serial := fs.Bool("serial-log", false, "print the verdict's whole serial log (else only when the point failed)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("usage: lifeboat point show ID [--serial-log]")
	}
	var p api.PointDetail
	if err := cf.call(ctx, e, http.MethodGet, api.Prefix+"/points/"+api.Q(pos[0]), nil, &p); err != nil || cf.json {
		return err
	}
	fmt.Fprintf(e.stdout, "point %s of %s (%s), %s on %s, %s; group %s; %s, %s stored\n", p.ID, p.Name, p.Kind, ts(p.Time),
		firstOf(p.Host, "-"), p.Consistency, firstOf(p.Group, "-"), human(p.Size), human(p.Stored))
	for _, f := range p.Files {
		fmt.Fprintf(e.stdout, "  %-10s %s (%s)\n", f.Role, f.Path, human(f.Size))
	}
	for _, n := range p.Notes {
		fmt.Fprintf(e.stdout, "  note: %s\n", n)
	}
	if p.VerifyBoot == nil {
		fmt.Fprintln(e.stdout, "boot: never verified")
		return nil
	}
	printAPIVerdict(e, p.VerifyBoot, *serial || p.VerifyBoot.Verdict != "booted-agent-ok")
	return nil
}

// printAPIVerdict prints a verdict and, with serial, the end of its
// serial log (all of it that the verdict holds when it is short).
func printAPIVerdict(e *env, v *api.BootVerdict, serial bool) {
	fmt.Fprintf(e.stdout, "boot: %s on %s at %s (%s); boot %.1fs, %.1fs in all\n", v.Verdict, firstOf(v.Host, "-"), ts(v.CheckedAt), v.Reason, v.BootSeconds, v.Seconds)
	if len(v.Check) > 0 {
		var c struct {
			Command  string `json:"command"`
			ExitCode int    `json:"exit_code"`
			Stdout   string `json:"stdout"`
			Stderr   string `json:"stderr"`
		}
		if json.Unmarshal(v.Check, &c) == nil {
			fmt.Fprintf(e.stdout, "  check %q: exit %d\n", c.Command, c.ExitCode)
			if s := strings.TrimSpace(c.Stdout); s != "" {
				fmt.Fprintf(e.stdout, "    stdout: %s\n", s)
			}
			if s := strings.TrimSpace(c.Stderr); s != "" {
				fmt.Fprintf(e.stdout, "    stderr: %s\n", s)
			}
		}
	}
	for _, n := range v.Notes {
		fmt.Fprintf(e.stdout, "  note: %s\n", n)
	}
	if v.Error != "" {
		fmt.Fprintf(e.stdout, "  the verdict's record does not load: %s\n", v.Error)
	}
	if !serial || v.SerialLog == "" {
		return
	}
	lines := strings.Split(strings.TrimRight(v.SerialLog, "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	fmt.Fprintf(e.stdout, "  serial console (last %d lines of %d bytes):\n", len(lines), v.SerialLogBytes)
	for _, l := range lines {
		fmt.Fprintf(e.stdout, "  | %s\n", strings.TrimRight(l, "\r"))
	}
}
