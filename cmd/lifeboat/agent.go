package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"lifeboat/agent"
	"lifeboat/catalog"
	"lifeboat/hypervisor/libvirt"
)

// cmdAgent runs the agent, or with "list"/"revoke" asks the server about
// agents.
func cmdAgent(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "list":
			return cmdAgentList(ctx, e, args[1:])
		case "revoke":
			return cmdAgentRevoke(ctx, e, args[1:])
		case "inventory":
			return cmdAgentInventory(ctx, e, args[1:])
		}
	}
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	srv := fs.String("server", "", "server URL, https://host:8443 (or $LIFEBOAT_SERVER; remembered after enrollment)")
	token := fs.String("token", "", "one-time enrollment token (or $LIFEBOAT_ENROLL_TOKEN)")
	fp := fs.String("ca-fingerprint", "", "pin the server's CA by its SHA-256 fingerprint (printed by `lifeboat server` and `lifeboat token create`)")
	caFile := fs.String("ca", "", "trust this CA certificate (PEM) instead of fetching it")
	stateDir := fs.String("state", "", "state folder: key, certificates (or $LIFEBOAT_AGENT_STATE; default ./lifeboat-agent)")
	name := fs.String("name", "", "node name (default: the host name)")
	var vmDirs, volumes stringList
	fs.Var(&vmDirs, "vm-dir", "folder whose subfolders and images are VMs (repeatable)")
	lvURI := fs.String("libvirt", "", "protect the VMs of this libvirt host: its local URI (qemu:///system, qemu:///session?socket=…); backups run online through checkpoints")
	lvScratch := fs.String("libvirt-scratch", "", "with --libvirt: folder for backup scratch files and NBD sockets, as the daemon sees it (default /var/tmp, or the session daemon's runtime folder)")
	fs.Var(&volumes, "shared-volume", "PATH=ID: a shared volume this host sees (repeatable; the server also sends its cluster's)")
	pwFile := fs.String("password-file", "", "repository password file (or $LIFEBOAT_PASSWORD), for an encrypted repository")
	restoreRoot := fs.String("restore-root", "", "refuse restores outside this folder")
	haMgr := fs.String("ha-manager", "", "the cluster's HA manager for recoveries that keep or add HA roles: pacemaker (or $LIFEBOAT_HA_MANAGER); none by default")
	interval := fs.Duration("interval", 0, "heartbeat and inventory interval (default: the server's)")
	jobs := fs.Int("jobs", 2, "jobs run at once")
	wait := fs.Duration("wait", 30*time.Second, "long-poll wait for jobs")
	logLevel := fs.String("log-level", "info", logLevelUsage)
	logFormat := fs.String("log-format", "auto", logFormatUsage)
	metricsListen := fs.String("metrics-listen", "", "serve Prometheus metrics in plain HTTP on this address, e.g. 127.0.0.1:9465 (default: off)")
	asJSON := fs.Bool("json", false, "print the start-up summary as one JSON line")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("usage: lifeboat agent --server URL --token T [--vm-dir DIR]… | [--libvirt URI] | lifeboat agent list|revoke|inventory")
	}
	log, err := daemonLogger(e, *logFormat, *logLevel)
	if err != nil {
		return err
	}
	cfg := agent.Config{
		Server: firstOf(*srv, e.getenv("LIFEBOAT_SERVER")), Token: firstOf(*token, e.getenv("LIFEBOAT_ENROLL_TOKEN")),
		CAFingerprint: *fp, CAFile: *caFile, StateDir: firstOf(*stateDir, e.getenv("LIFEBOAT_AGENT_STATE"), "lifeboat-agent"),
		Name: *name, VMDirs: vmDirs, RestoreRoot: *restoreRoot, Interval: *interval, Jobs: *jobs, Wait: *wait,
		Password: e.getenv("LIFEBOAT_PASSWORD"), Version: version, Log: log,
	}
	if cfg.HA, err = openHA(e, *haMgr); err != nil {
		return err
	}
	if *pwFile != "" {
		b, err := os.ReadFile(*pwFile)
		if err != nil {
			return fmt.Errorf("read password file: %w", err)
		}
		cfg.Password = strings.TrimRight(string(b), "\r\n")
	}
	for _, v := range volumes {
		p, id, ok := strings.Cut(v, "=")
		if !ok || !strings.HasPrefix(p, "/") || id == "" {
			return usagef("--shared-volume %q: want /PATH=ID", v)
		}
		cfg.Volumes = append(cfg.Volumes, catalog.SharedVolume{Path: p, VolumeID: id})
	}
	switch {
	case *lvURI != "" && len(vmDirs) > 0:
		return usagef("--libvirt and --vm-dir exclude each other: one agent per host, one driver per agent")
	case *lvURI != "":
		h := agent.NewLibvirt(libvirt.Options{URI: *lvURI, ScratchDir: *lvScratch, ThawGuard: newThawGuard()}, log)
		defer h.Close()
		cfg.Driver = h
	case *lvScratch != "":
		return usagef("--libvirt-scratch needs --libvirt")
	}
	return runAgent(ctx, e, cfg, *metricsListen, *asJSON)
}

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
