package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/recovery"
	"lifeboat/repo"
)

// scratchDirer is a hypervisor connection that names the folder its
// daemon's QEMU may create files in (the libvirt driver).
type scratchDirer interface {
	ScratchDir() string
}

// verifyBoot runs a verify-boot job: the point boots as a throwaway VM on
// this node's hypervisor (recovery.VerifyBoot), which stores the verdict
// beside the point in the repository; the job's result names it, and the
// server reads it from there. A verdict of any kind is a result, not an
// error: the server decides what a failed boot does to the job.
func (a *Agent) verifyBoot(ctx context.Context, run *jobRun) (any, error) {
	var p api.VerifyBootParams
	if err := json.Unmarshal(run.job.Params, &p); err != nil {
		return nil, fmt.Errorf("job params: %w", err)
	}
	if !repo.ValidPointID(p.Point) {
		return nil, fmt.Errorf("job params: %q is not a point ID", p.Point)
	}
	if p.TimeoutSeconds < 0 || p.TimeoutSeconds > 3600 {
		return nil, fmt.Errorf("job params: timeout of %d s is outside 0 to 3600", p.TimeoutSeconds)
	}
	hd, ok := a.cfg.Driver.(hostDriver)
	if !ok {
		return nil, fmt.Errorf("node %s's agent manages VM folders, not a hypervisor (driver %s): a verify-boot needs a node whose agent runs with a hypervisor (--libvirt)",
			a.cfg.Name, a.cfg.Driver.Name())
	}
	drv, err := hd.Conn(ctx)
	if err != nil {
		return nil, recovery.HostUnreachable(a.cfg.Name, err)
	}
	dir := os.TempDir()
	if sd, ok := drv.(scratchDirer); ok && sd.ScratchDir() != "" {
		dir = sd.ScratchDir()
	}
	req := recovery.VerifyBootRequest{Point: p.Point, Driver: drv, TargetHost: a.cfg.Name, Dir: dir, Check: p.Check,
		Timeout: time.Duration(p.TimeoutSeconds) * time.Second}
	// The host's QEMU creates the serial log in the run folder and
	// connects to the NBD socket there: a session daemon's QEMU runs as
	// the daemon's user, whom its scratch folder belongs to.
	if os.Geteuid() == 0 {
		if uid, gid, ok := fileOwner(dir); ok && uid != 0 {
			req.UID, req.GID, req.ChownDir = uid, gid, true
		}
	}
	r, _, err := a.openRepo(ctx)
	if err != nil {
		return nil, err
	}
	rc := &recovery.Recovery{Repo: r, Log: func(msg string) { run.logf("info", "%s", msg) }}
	run.logf("info", "verify-boot of point %s on %s (run folder in %s)", p.Point, a.cfg.Name, dir)
	v, err := rc.VerifyBoot(ctx, req)
	if err != nil {
		var pe *recovery.PreflightError
		if errors.As(err, &pe) {
			return nil, pe
		}
		return nil, err
	}
	for _, n := range v.Notes {
		run.logf("info", "%s", n)
	}
	level := "info"
	if !v.OK() {
		level = "warn"
	}
	run.logf(level, "point %s of %s on %s: %s (%s), boot %.1fs, %.1fs in all; verdict %s",
		v.Point, v.VM, v.Host, v.Verdict, v.Reason, v.BootSeconds, v.Seconds, v.Key)
	return api.VerifyBootResult{VM: v.VM, Throwaway: v.Throwaway, Verdict: catalog.BootVerdict{
		PointID: v.Point, Verdict: v.Verdict, Reason: v.Reason, Host: v.Host, CheckedAt: v.Time,
		BootSeconds: v.BootSeconds, Seconds: v.Seconds, Key: v.Key}}, nil
}
