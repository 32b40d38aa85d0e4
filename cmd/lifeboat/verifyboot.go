package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"lifeboat/hypervisor/libvirt"
	"lifeboat/recovery"
)

// cmdVerifyBoot is `lifeboat verify-boot`: boot a point as a throwaway VM
// on a host, wait for its guest agent, optionally run a check command in
// it, record the verdict beside the point and remove every trace of the
// VM. It exits 0 only for booted-agent-ok. With --list it prints the
// point's recorded verdicts instead.
func cmdVerifyBoot(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("verify-boot", flag.ContinueOnError)
	var rf repoFlags
	rf.register(fs, true)
	point := fs.String("point", "", "point ID")
	lv := fs.String("libvirt", "", "libvirt URI of the host that boots the throwaway VM")
	hostName := fs.String("host-name", "", "the host's name in the verdict (default: its host name)")
	dir := fs.String("dir", "/var/tmp", "folder that this process and the host's QEMU see at the same path (the run's socket, serial log and NVRAM go in a subfolder that is removed)")
	owner := fs.String("owner", "", "USER[:GROUP] the host's QEMU runs as (a session daemon's user): owns the run folder and the NBD socket")
	check := fs.String("check", "", "shell command run in the guest through the agent once it answers; a non-zero exit fails the point")
	timeout := fs.Duration("timeout", time.Minute, "how long the guest agent may take to answer after the VM starts")
	checkTimeout := fs.Duration("check-timeout", 0, "how long the check command may run (default: --timeout)")
	keepLog := fs.String("keep-log", "", "folder that keeps the whole serial log and the verdict as files")
	noRecord := fs.Bool("no-record", false, "do not store the verdict in the repository")
	list := fs.Bool("list", false, "print the point's recorded verdicts, newest last, and boot nothing")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *point == "" || (*lv == "" && !*list) {
		return usagef("usage: lifeboat verify-boot --point ID --libvirt URI [--check CMD] [--timeout 60s] [--dir DIR] [--owner USER] [--json] | --point ID --list")
	}
	r, err := rf.open(ctx, e)
	if err != nil {
		return err
	}
	rc := &recovery.Recovery{Repo: r}
	if *list {
		vs, err := rc.BootVerdicts(ctx, *point)
		if err != nil {
			return err
		}
		if rf.json {
			return json.NewEncoder(e.stdout).Encode(map[string]any{"verdicts": vs})
		}
		for _, v := range vs {
			fmt.Fprintf(e.stdout, "%s  %-16s on %s in %.1fs: %s\n", v.Time.Format(time.RFC3339), v.Verdict, v.Host, v.Seconds, v.Reason)
		}
		return nil
	}
	req := recovery.VerifyBootRequest{Point: *point, TargetHost: *hostName, Check: *check, Timeout: *timeout,
		CheckTimeout: *checkTimeout, NoRecord: *noRecord}
	if req.Dir, err = filepath.Abs(*dir); err != nil {
		return err
	}
	if *keepLog != "" {
		if req.KeepLogDir, err = filepath.Abs(*keepLog); err != nil {
			return err
		}
	}
	if *owner != "" {
		var own recovery.Request
		if err := fileOwnership(&own, "", *owner); err != nil {
			return err
		}
		req.UID, req.GID, req.ChownDir = own.UID, own.GID, true
	}
	drv, err := libvirt.Open(ctx, libvirt.Options{URI: *lv})
	if err != nil {
		return reportRefusal(e, rf.json, nil, recovery.HostUnreachable(*lv, err))
	}
	defer drv.Close()
	req.Driver = drv
	if !rf.json {
		rc.Log = func(msg string) { fmt.Fprintln(e.stderr, msg) }
	}
	v, err := rc.VerifyBoot(ctx, req)
	if pe, ok := recovery.AsPreflight(err); ok {
		return reportRefusal(e, rf.json, nil, pe)
	}
	if v != nil {
		if rf.json {
			json.NewEncoder(e.stdout).Encode(map[string]any{"verdict": v})
		} else {
			printVerdict(e, v)
		}
	}
	if err != nil {
		return err
	}
	if !v.OK() {
		return fmt.Errorf("point %s: %s: %s", v.Point, v.Verdict, v.Reason)
	}
	return nil
}

func printVerdict(e *env, v *recovery.BootVerdict) {
	for _, n := range v.Notes {
		fmt.Fprintf(e.stdout, "note: %s\n", n)
	}
	if c := v.Check; c != nil {
		fmt.Fprintf(e.stdout, "check %q: exit %d (%.1fs)\n", c.Command, c.ExitCode, c.Seconds)
		if c.Stdout != "" {
			fmt.Fprintf(e.stdout, "  stdout: %s\n", strings.TrimSpace(c.Stdout))
		}
		if c.Stderr != "" {
			fmt.Fprintf(e.stdout, "  stderr: %s\n", strings.TrimSpace(c.Stderr))
		}
	}
	if !v.OK() && v.SerialLog != "" {
		// The end of the console is what explains a failed boot.
		lines := strings.Split(strings.TrimRight(v.SerialLog, "\n"), "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		fmt.Fprintf(e.stdout, "serial console (last %d lines of %d bytes):\n", len(lines), v.SerialLogBytes)
		for _, l := range lines {
			fmt.Fprintf(e.stdout, "  | %s\n", strings.TrimRight(l, "\r"))
		}
	}
	if v.SerialLogFile != "" {
		fmt.Fprintf(e.stdout, "serial log kept in %s\n", v.SerialLogFile)
	}
	fmt.Fprintf(e.stdout, "point %s of %s on %s: %s (%s), boot %.1fs, total %.1fs\n", v.Point, v.VM, v.Host, v.Verdict, v.Reason, v.BootSeconds, v.Seconds)
}
